// follow-flows --blocks (the flows rule): the trajectories of one batch of
// blocks through the complete flow store of a plan -- each foreground voxel of
// a block's core followed through the flows of the block and a halo (widened
// where a trajectory leaves it) to its end point in the whole image. The end
// points go to the plan's work directory (flows-ends/, reached through
// plan.json; a block's marker file is written after its end points), where FOLLOW_FLOWS
// takes them instead of following those blocks itself. On the CPU; an
// incomplete flow store is refused, and a rerun keeps the blocks already there.
process FOLLOW_BLOCKS {
    tag "${meta.id}:${blocks}"
    // what `python -m pystitch.resources` estimated from the plan for this step (one block's window at a time)
    cpus   { estimate.cpus }
    memory { "${estimate.memory_mb * task.attempt} MB" }
    time   { "${estimate.minutes * task.attempt} min" }
    // Cellpose's dynamics: the image that carries Cellpose (run on the CPU)
    container "${params.container_gpu}"

    input:
    tuple val(meta), path(plan), path(predicted), val(blocks), val(estimate)

    output:
    tuple val(meta), path("follow-*.json")                                          , emit: json
    tuple val("${task.process}"), val('pystitch'), eval('pystitch --version'), topic: versions, emit: versions_pystitch

    when:
    task.ext.when == null || task.ext.when

    script:
    // the step's options from the parameters (meta.args, built from nextflow_schema.json), then ext.args
    def args = [ meta.args?.get('follow-flows'), task.ext.args ].findAll { a -> a }.join(' ')
    def ids  = blocks.toString().tokenize(',-')
    def name = String.format('follow-%06d-%06d.json', ids.first() as long, ids.last() as long)
    """
    # zarr's codec threads: the cores this task asked for (an executor may not pin it to them)
    export ZARR_THREADING__MAX_WORKERS=\${ZARR_THREADING__MAX_WORKERS:-${task.cpus}}
    follow-flows \\
        ${plan} \\
        --blocks '${blocks}' \\
        ${args} \\
        > ${name}
    """

    stub:
    def ids  = blocks.toString().tokenize(',-')
    def name = String.format('follow-%06d-%06d.json', ids.first() as long, ids.last() as long)
    """
    echo '{}' > ${name}
    """
}
