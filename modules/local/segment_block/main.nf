// segment-block: segment one batch of blocks into the plan's staging store. The
// manifests (one JSON line per block, written last) are concatenated into one
// JSON Lines file per task, so gathering them costs one file per task, not one
// per block. The image is staged only so that container engines mount it:
// segment-block reads it through the absolute path recorded in plan.json.
process SEGMENT_BLOCK {
    tag "${meta.id}:${blocks}"
    label 'process_gpu'
    // the GPU image carries torch and Cellpose: used on GPU tasks and for the cellpose backend
    container "${ (task.accelerator || params.backend == 'cellpose') ? params.container_gpu : params.container_cpu }"

    input:
    tuple val(meta), path(plan), path(image), val(blocks)

    output:
    tuple val(meta), path("manifests-*.jsonl"), emit: manifests
    path "versions.yml"                       , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    def ids  = blocks.toString().tokenize(',-')
    def name = String.format('manifests-%06d-%06d.jsonl', ids.first() as long, ids.last() as long)
    """
    segment-block \\
        ${plan} \\
        --blocks '${blocks}' \\
        --manifest-dir . \\
        ${args}
    cat block-*.json > ${name}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        pystitch: \$(pystitch --version)
    END_VERSIONS
    """

    stub:
    def ids  = blocks.toString().tokenize(',-')
    def name = String.format('manifests-%06d-%06d.jsonl', ids.first() as long, ids.last() as long)
    """
    touch ${name}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        pystitch: \$(pystitch --version)
    END_VERSIONS
    """
}
