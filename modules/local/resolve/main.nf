// resolve: join the pairs of all blocks of one image into final ids (lut.zarr,
// resolve.json); also creates the (partial) output array in the plan's staging
// folder. Single-threaded; memory follows the number of objects crossing seams.
process RESOLVE {
    tag "${meta.id}"
    label 'process_medium'
    container "${params.container_cpu}"

    input:
    tuple val(meta), path(plan), path(manifests), path(pairs, stageAs: 'pairs/*')

    output:
    tuple val(meta), path("lut.zarr")                                               , emit: lut
    tuple val(meta), path("resolve.json")                                           , emit: json
    tuple val("${task.process}"), val('pystitch'), eval('pystitch --version'), topic: versions, emit: versions_pystitch

    when:
    task.ext.when == null || task.ext.when

    script:
    // the step's options from the parameters (meta.args, built from nextflow_schema.json), then ext.args
    def args = [ meta.args?.get('resolve'), task.ext.args ].findAll { a -> a }.join(' ')
    """
    # zarr's codec threads: the cores this task asked for (an executor may not pin it to them)
    export ZARR_THREADING__MAX_WORKERS=\${ZARR_THREADING__MAX_WORKERS:-${task.cpus}}
    resolve \\
        ${plan} \\
        --manifests ${manifests} \\
        --pairs pairs \\
        --out lut.zarr \\
        ${args}
    """

    stub:
    """
    mkdir lut.zarr
    echo '{}' > resolve.json
    """
}
