// Writes pystitch's built-in synthetic OME-Zarr image (bright blobs on a noisy
// background; threshold 500 segments it). Used by `--input example` (the test
// profile): the pipeline creates its own test data, nothing is downloaded.
process EXAMPLE_IMAGE {
    tag "${meta.id}"
    label 'process_single'
    container "${params.container_cpu}"

    input:
    tuple val(meta), val(shape)

    output:
    tuple val(meta), path("${meta.id}.zarr")                                        , emit: image
    tuple val("${task.process}"), val('pystitch'), eval('pystitch --version'), topic: versions, emit: versions_pystitch

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    pystitch example \\
        ${meta.id}.zarr \\
        --shape ${shape} \\
        ${args}
    """

    stub:
    """
    mkdir ${meta.id}.zarr
    """
}
