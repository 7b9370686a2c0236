// assign-flows --blocks (the flows rule): one batch of blocks labelled by the
// seed region their end points fall in, from the region map SEED_FLOWS made:
// each core's staging labels, then its per-object stats (flows-ends/ in the
// plan's work directory, reached through plan.json; written after the labels),
// which FOLLOW_FLOWS takes instead of assigning those blocks itself. On the
// CPU; a missing or stale region map is refused, and a rerun keeps the blocks
// already assigned from the same map.
process ASSIGN_BLOCKS {
    tag "${meta.id}:${blocks}"
    // what `python -m pystitch.resources` estimated from the plan for this step (one block at a time)
    cpus   { estimate.cpus }
    memory { "${estimate.memory_mb * task.attempt} MB" }
    time   { "${estimate.minutes * task.attempt} min" }
    // Cellpose's dynamics: the image that carries Cellpose (run on the CPU)
    container "${params.container_gpu}"

    input:
    tuple val(meta), path(plan), path(seeds), val(blocks), val(estimate)

    output:
    tuple val(meta), path("assign-*.json")                                          , emit: json
    tuple val("${task.process}"), val('pystitch'), eval('pystitch --version'), topic: versions, emit: versions_pystitch

    when:
    task.ext.when == null || task.ext.when

    script:
    // the step's options from the parameters (meta.args, built from nextflow_schema.json), then ext.args
    def args = [ meta.args?.get('assign-flows'), task.ext.args ].findAll { a -> a }.join(' ')
    def ids  = blocks.toString().tokenize(',-')
    def name = String.format('assign-%06d-%06d.json', ids.first() as long, ids.last() as long)
    """
    # zarr's codec threads: the cores this task asked for (an executor may not pin it to them)
    export ZARR_THREADING__MAX_WORKERS=\${ZARR_THREADING__MAX_WORKERS:-${task.cpus}}
    assign-flows \\
        ${plan} \\
        --blocks '${blocks}' \\
        ${args} \\
        > ${name}
    """

    stub:
    def ids  = blocks.toString().tokenize(',-')
    def name = String.format('assign-%06d-%06d.json', ids.first() as long, ids.last() as long)
    """
    echo '{}' > ${name}
    """
}
