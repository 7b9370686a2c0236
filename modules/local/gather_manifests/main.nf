// Concatenates the manifests of every batch of one image into one JSON Lines
// file (valid input for face-pairs and resolve), once per image: each face-pairs
// task then stages one file instead of one per batch.
process GATHER_MANIFESTS {
    tag "${meta.id}"
    label 'process_single'
    container "${params.container_cpu}"

    input:
    tuple val(meta), path(parts, stageAs: 'parts/*')

    output:
    tuple val(meta), path("manifests.jsonl")                                                                   , emit: manifests
    tuple val("${task.process}"), val('coreutils'), eval("cat --version | head -n 1 | sed 's/^.* //'"), topic: versions, emit: versions_coreutils

    when:
    task.ext.when == null || task.ext.when

    script:
    """
    # find + xargs: no argument-list limit however many batches an image has
    find parts/ -name '*.jsonl' | LC_ALL=C sort | xargs cat > manifests.jsonl
    """

    stub:
    """
    touch manifests.jsonl
    """
}
