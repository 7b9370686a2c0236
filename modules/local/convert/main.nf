// convert: an input that is not one chunked array (a glob or folder of TIFF
// planes) -> one OME-Zarr image in this task's directory, which PLAN_BLOCKS then
// reads like any other image. Blockwise, bounded memory, task.cpus workers;
// a retried task resumes the regions already written (pystitch convert resumes
// by itself in the same directory, and -resume skips a finished task).
//
// The input is a value, not a staged path: a glob names many files, and the
// planes are read where they are (an absolute path on the shared filesystem).
process CONVERT {
    tag "${meta.id}"
    label 'process_medium'
    container "${params.container_cpu}"

    input:
    tuple val(meta), val(image)

    output:
    tuple val(meta), path("${meta.id}.ome.zarr")                                    , emit: image
    tuple val("${task.process}"), val('pystitch'), eval('pystitch --version'), topic: versions, emit: versions_pystitch

    when:
    task.ext.when == null || task.ext.when

    script:
    // the step's options from the parameters (meta.args, built from nextflow_schema.json), then ext.args
    def args = [ meta.args?.get('convert'), task.ext.args ].findAll { a -> a }.join(' ')
    """
    pystitch convert \\
        "${image}" \\
        "${meta.id}.ome.zarr" \\
        --workers ${task.cpus} \\
        --no-progress \\
        ${args}
    """

    stub:
    """
    mkdir "${meta.id}.ome.zarr"
    """
}
