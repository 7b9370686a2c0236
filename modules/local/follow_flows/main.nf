// follow-flows (the flows rule): Cellpose's dynamics on the complete flow store
// of one plan -- the end points the FOLLOW_BLOCKS tasks left (a block without
// them is followed here), seeds found in the histogram of end points of the
// whole image, Cellpose's mask filters on whole objects -- into the staging
// labels, lut.zarr (as resolve writes it, so apply-lut and finalize work as
// for any rule) and resolve.json; also creates the (partial) output array and
// removes the end points it consumed. On the CPU; an incomplete flow store is
// refused.
process FOLLOW_FLOWS {
    tag "${meta.id}"
    // what `python -m pystitch.resources` estimated from the plan for this step (one task per image)
    cpus   { estimate.cpus }
    memory { "${estimate.memory_mb * task.attempt} MB" }
    time   { "${estimate.minutes * task.attempt} min" }
    // Cellpose's dynamics: the image that carries Cellpose (run on the CPU)
    container "${params.container_gpu}"

    input:
    tuple val(meta), path(plan), path(followed), val(estimate)

    output:
    tuple val(meta), path("lut.zarr")                                               , emit: lut
    tuple val(meta), path("resolve.json")                                           , emit: json
    tuple val("${task.process}"), val('pystitch'), eval('pystitch --version'), topic: versions, emit: versions_pystitch

    when:
    task.ext.when == null || task.ext.when

    script:
    // the step's options from the parameters (meta.args, built from nextflow_schema.json), then ext.args
    def args = [ meta.args?.get('follow-flows'), task.ext.args ].findAll { a -> a }.join(' ')
    """
    follow-flows \\
        ${plan} \\
        --out lut.zarr \\
        ${args}
    """

    stub:
    """
    mkdir lut.zarr
    echo '{}' > resolve.json
    """
}
