// follow-flows (the flows rule): the end of Cellpose's dynamics on the complete
// flow store of one plan -- Cellpose's mask filters on whole objects, from the
// per-object stats of every block that the ASSIGN_BLOCKS tasks left (what no
// task did is done here) and crops of single objects -- into lut.zarr (as
// resolve writes it, so apply-lut and finalize work as for any rule; the few
// voxels of filled holes are written into the staging labels) and
// resolve.json; also creates the (partial) output array and removes the end
// points and stats it consumed. On the CPU; an incomplete flow store is
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
    tuple val(meta), path(plan), path(assigned), val(estimate)

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
    # zarr's codec threads: the cores this task asked for (an executor may not pin it to them)
    export ZARR_THREADING__MAX_WORKERS=\${ZARR_THREADING__MAX_WORKERS:-${task.cpus}}
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
