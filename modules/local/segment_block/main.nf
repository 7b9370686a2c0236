// segment-block: segment one batch of blocks into the plan's staging store. The
// manifests (one JSON line per block, written last) are concatenated into one
// JSON Lines file per task, so gathering them costs one file per task, not one
// per block. The image is staged only so that container engines mount it:
// segment-block reads it through the absolute path recorded in plan.json.
process SEGMENT_BLOCK {
    tag "${meta.id}:${blocks}"
    label 'process_gpu'
    // what `python -m pystitch.resources` estimated from the plan for one task of this step
    cpus   { estimate.cpus }
    memory { "${estimate.memory_mb * task.attempt} MB" }
    time   { "${estimate.minutes * task.attempt} min" }
    // the GPU image carries torch and Cellpose: used on GPU tasks and for the cellpose backend
    container "${ (task.accelerator || params.backend == 'cellpose') ? params.container_gpu : params.container_cpu }"

    input:
    tuple val(meta), path(plan), path(image), val(blocks), val(estimate)

    output:
    tuple val(meta), path("manifests-*.jsonl")                                      , emit: manifests
    tuple val("${task.process}"), val('pystitch'), eval('pystitch --version'), topic: versions, emit: versions_pystitch

    when:
    task.ext.when == null || task.ext.when

    script:
    // the step's options from the parameters (meta.args, built from nextflow_schema.json), then ext.args
    def args = [ meta.args?.get('segment-block'), task.ext.args ].findAll { a -> a }.join(' ')
    def ids  = blocks.toString().tokenize(',-')
    def name = String.format('manifests-%06d-%06d.jsonl', ids.first() as long, ids.last() as long)
    """
    # zarr's codec threads: the cores this task asked for (an executor may not pin it to them)
    export ZARR_THREADING__MAX_WORKERS=\${ZARR_THREADING__MAX_WORKERS:-${task.cpus}}
    segment-block \\
        ${plan} \\
        --blocks '${blocks}' \\
        --manifest-dir . \\
        ${args}
    cat block-*.json > ${name}
    """

    stub:
    def ids  = blocks.toString().tokenize(',-')
    def name = String.format('manifests-%06d-%06d.jsonl', ids.first() as long, ids.last() as long)
    """
    touch ${name}
    """
}
