// seed-flows (the flows rule): the seeds of one image -- found in the histogram
// of end points the FOLLOW_BLOCKS tasks left (a block without them is followed
// here), ranked over the whole image as Cellpose ranks them and grown into the
// region map (flows-ends/regions.npz in the plan's work directory, reached
// through plan.json) that ASSIGN_BLOCKS labels blocks from. On the CPU; an
// incomplete flow store is refused, and a rerun keeps a region map of the same
// flows.
process SEED_FLOWS {
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
    tuple val(meta), path("seeds.json")                                             , emit: json
    tuple val("${task.process}"), val('pystitch'), eval('pystitch --version'), topic: versions, emit: versions_pystitch

    when:
    task.ext.when == null || task.ext.when

    script:
    // the step's options from the parameters (meta.args, built from nextflow_schema.json), then ext.args
    def args = [ meta.args?.get('seed-flows'), task.ext.args ].findAll { a -> a }.join(' ')
    """
    # zarr's codec threads: the cores this task asked for (an executor may not pin it to them)
    export ZARR_THREADING__MAX_WORKERS=\${ZARR_THREADING__MAX_WORKERS:-${task.cpus}}
    seed-flows \\
        ${plan} \\
        ${args} \\
        > seeds.json
    """

    stub:
    """
    echo '{}' > seeds.json
    """
}
