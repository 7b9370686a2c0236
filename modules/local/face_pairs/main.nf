// face-pairs: find the objects of neighbouring blocks that are one object, for
// one batch of blocks. It reads the face slabs of the batch and of its neighbours
// from the staging store, so it gets the manifests of the whole image.
process FACE_PAIRS {
    tag "${meta.id}:${blocks}"
    // what `python -m pystitch.resources` estimated from the plan for one task of this step
    cpus   { estimate.cpus }
    memory { "${estimate.memory_mb * task.attempt} MB" }
    time   { "${estimate.minutes * task.attempt} min" }
    container "${params.container_cpu}"

    input:
    tuple val(meta), path(plan), path(manifests), val(blocks), val(estimate)

    output:
    tuple val(meta), path("pairs-*.npz")                                            , emit: pairs
    tuple val("${task.process}"), val('pystitch'), eval('pystitch --version'), topic: versions, emit: versions_pystitch

    when:
    task.ext.when == null || task.ext.when

    script:
    // the step's options from the parameters (meta.args, built from nextflow_schema.json), then ext.args
    def args = [ meta.args?.get('face-pairs'), task.ext.args ].findAll { a -> a }.join(' ')
    """
    # zarr's codec threads: the cores this task asked for (an executor may not pin it to them)
    export ZARR_THREADING__MAX_WORKERS=\${ZARR_THREADING__MAX_WORKERS:-${task.cpus}}
    face-pairs \\
        ${plan} \\
        --blocks '${blocks}' \\
        --manifests ${manifests} \\
        --out . \\
        ${args}
    """

    stub:
    def ids = blocks.toString().tokenize(',-')
    def name = String.format('pairs-%06d-%06d.npz', ids.first() as long, ids.last() as long)
    """
    touch ${name}
    """
}
