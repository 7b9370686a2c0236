// predict-flows (the flows rule): Cellpose's network over one batch of blocks
// of a plan, into the plan's flow store (in the plan's staging folder, reached
// through plan.json; created by plan-blocks, so the batches of an image write
// it side by side, each block its own chunks). The only step of the rule that
// wants a GPU. Each block is marked in the store once written: a rerun
// predicts only the blocks not marked, and the task that finds every block
// marked marks the store complete. A batch runs every forward batch of
// Cellpose's whole-image tiling that its blocks read (a forward batch read by
// blocks of two tasks runs in both: the flows are the same). The image is
// staged only so that container engines mount it: predict-flows reads it
// through the absolute path recorded in plan.json.
process PREDICT_FLOWS {
    tag "${meta.id}:${blocks}"
    label 'process_gpu'
    // what `python -m pystitch.resources` estimated from the plan for this step (the whole image: a bound)
    cpus   { estimate.cpus }
    memory { "${estimate.memory_mb * task.attempt} MB" }
    time   { "${estimate.minutes * task.attempt} min" }
    // the GPU image carries torch and Cellpose
    container "${params.container_gpu}"

    input:
    tuple val(meta), path(plan), path(image), val(blocks), val(estimate)

    output:
    tuple val(meta), path("predict-*.json")                                         , emit: json
    tuple val("${task.process}"), val('pystitch'), eval('pystitch --version'), topic: versions, emit: versions_pystitch

    when:
    task.ext.when == null || task.ext.when

    script:
    // the step's options from the parameters (meta.args, built from nextflow_schema.json), then ext.args
    def args = [ meta.args?.get('predict-flows'), task.ext.args ].findAll { a -> a }.join(' ')
    def ids  = blocks.toString().tokenize(',-')
    def name = String.format('predict-%06d-%06d.json', ids.first() as long, ids.last() as long)
    """
    # zarr's codec threads: the cores this task asked for (an executor may not pin it to them)
    export ZARR_THREADING__MAX_WORKERS=\${ZARR_THREADING__MAX_WORKERS:-${task.cpus}}
    predict-flows \\
        ${plan} \\
        --blocks '${blocks}' \\
        ${args} \\
        > ${name}
    """

    stub:
    def ids  = blocks.toString().tokenize(',-')
    def name = String.format('predict-%06d-%06d.json', ids.first() as long, ids.last() as long)
    """
    echo '{}' > ${name}
    """
}
