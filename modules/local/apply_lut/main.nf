// apply-lut: write the final ids of one batch of blocks into the output chunks
// (in the plan's staging folder) and their region statistics
// (stats-<first>-<last>.npz). The image is staged only so that container
// engines mount it: with --intensity_stats apply-lut reads it through the
// absolute path recorded in plan.json.
process APPLY_LUT {
    tag "${meta.id}:${blocks}"
    // what `python -m pystitch.resources` estimated from the plan for one task of this step
    cpus   { estimate.cpus }
    memory { "${estimate.memory_mb * task.attempt} MB" }
    time   { "${estimate.minutes * task.attempt} min" }
    container "${params.container_cpu}"

    input:
    tuple val(meta), path(plan), path(image, stageAs: 'image/*'), path(lut), val(blocks), val(estimate)

    output:
    tuple val(meta), path("stats-*.npz")                                            , emit: stats
    tuple val("${task.process}"), val('pystitch'), eval('pystitch --version'), topic: versions, emit: versions_pystitch

    when:
    task.ext.when == null || task.ext.when

    script:
    // the step's options from the parameters (meta.args, built from nextflow_schema.json), then ext.args
    def args = [ meta.args?.get('apply-lut'), task.ext.args ].findAll { a -> a }.join(' ')
    """
    # zarr's codec threads: the cores this task asked for (an executor may not pin it to them)
    export ZARR_THREADING__MAX_WORKERS=\${ZARR_THREADING__MAX_WORKERS:-${task.cpus}}
    apply-lut \\
        ${plan} \\
        --blocks '${blocks}' \\
        --lut ${lut} \\
        --out . \\
        ${args}
    """

    stub:
    def ids = blocks.toString().tokenize(',-')
    def name = String.format('stats-%06d-%06d.npz', ids.first() as long, ids.last() as long)
    """
    touch ${name}
    """
}
