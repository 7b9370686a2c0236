// plan-blocks: check the image, cut it into blocks, scan it once, write plan.json;
// then list the blocks that need work as batches (one line per task of the
// fan-out) and the memory, time and cores a task of each batch step needs.
//
// The big stores (per-block labels, the output being written) go to `work_dir`,
// a folder of the run's staging directory that every later task reaches through
// the absolute paths recorded in plan.json; only plan.json, batches.txt and
// resources.json travel through channels. Nothing is written into this task's
// directory after it has finished.
process PLAN_BLOCKS {
    tag "${meta.id}"
    label 'process_medium'
    container "${params.container_cpu}"

    input:
    tuple val(meta), path(image), val(work_dir)
    val blocks_per_task

    output:
    tuple val(meta), path("plan.json")                                              , emit: plan
    tuple val(meta), path("batches.txt")                                            , emit: batches
    tuple val(meta), path("resources.json")                                         , emit: resources
    tuple val("${task.process}"), val('pystitch'), eval('pystitch --version'), topic: versions, emit: versions_pystitch

    when:
    task.ext.when == null || task.ext.when

    script:
    // the step's options from the parameters (meta.args, built from nextflow_schema.json), then ext.args
    def args = [ meta.args?.get('plan-blocks'), task.ext.args ].findAll { a -> a }.join(' ')
    // an image at a URL (meta.image_url; `image` is then a placeholder) and a staging URL are pystitch's to read and write
    def source = meta.image_url ?: (meta.glob ? "${image}/${meta.glob}" : "${image}")
    def remoteStaging = params.staging_dir && params.staging_dir.toString() ==~ /^[A-Za-z][A-Za-z0-9+.-]*:\/\/.*/
    def stores = remoteStaging ? "--store-dir '${params.staging_dir.toString().replaceAll('/+$', '')}/${work_dir.toString().tokenize('/').last()}'" : ''
    """
    # zarr's codec threads: the cores this task asked for (an executor may not pin it to them)
    export ZARR_THREADING__MAX_WORKERS=\${ZARR_THREADING__MAX_WORKERS:-${task.cpus}}
    plan=\$(
        plan-blocks \\
            "${source}" \\
            labels.zarr \\
            --work-dir "${work_dir}" \\
            ${stores} \\
            --workers ${task.cpus} \\
            ${args} \\
        | tail -n 1
    )
    cp "\$plan" plan.json

    pystitch batches plan.json --size ${blocks_per_task} > batches.txt
    # An image without any block to segment still goes through one trivial batch
    # (block 0, planned empty) so that resolve and finalize publish its empty output.
    [ -s batches.txt ] || echo 0 > batches.txt
    python3 -m pystitch.resources plan.json ${blocks_per_task} > resources.json
    """

    stub:
    """
    echo '{}' > plan.json
    printf '0-1\\n2-3\\n' > batches.txt
    echo '{"segment-block": {"memory_mb": 256, "minutes": 10, "cpus": 1}, "face-pairs": {"memory_mb": 256, "minutes": 10, "cpus": 1}, "apply-lut": {"memory_mb": 256, "minutes": 10, "cpus": 1}}' > resources.json
    """
}
