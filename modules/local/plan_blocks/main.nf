// plan-blocks: check the image, cut it into blocks, scan it once, write plan.json;
// then list the blocks that need work as batches (one line per task of the fan-out).
//
// The plan's work directory (plan.json, the staging store of per-block labels, the
// partial output) is this task's own directory by default: unique per input and
// settings, kept by -resume, on the work filesystem that every later task can
// reach. Later tasks find the big arrays through the absolute paths in plan.json;
// only plan.json itself travels through channels. `ext.work_dir` puts the stores
// elsewhere (e.g. a shared scratch filesystem); plan.json is then copied here.
process PLAN_BLOCKS {
    tag "${meta.id}"
    label 'process_medium'
    container "${params.container_cpu}"

    input:
    tuple val(meta), path(image), val(output_dir)
    val blocks_per_task

    output:
    tuple val(meta), path("plan.json")  , emit: plan
    tuple val(meta), path("batches.txt"), emit: batches
    path "versions.yml"                 , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args     = task.ext.args ?: ''
    def work_dir = task.ext.work_dir ?: '$PWD'
    def select   = [
        meta.array_path     ? "--array-path '${meta.array_path}'" : '',
        meta.level   != null ? "--level ${meta.level}"           : '',
        meta.channel != null ? "--channel ${meta.channel}"       : '',
    ].findAll().join(' ')
    """
    plan=\$(
        plan-blocks \\
            "${meta.glob ? "${image}/${meta.glob}" : image}" \\
            "${output_dir}/labels.zarr" \\
            --report-dir "${output_dir}/labels_report" \\
            --work-dir "${work_dir}" \\
            --workers ${task.cpus} \\
            ${select} \\
            ${args} \\
        | tail -n 1
    )
    [ "\$plan" -ef plan.json ] || cp "\$plan" plan.json

    pystitch batches plan.json --size ${blocks_per_task} > batches.txt
    # An image without any block to segment still goes through one trivial batch
    # (block 0, planned empty) so that resolve and finalize publish its empty output.
    [ -s batches.txt ] || echo 0 > batches.txt

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        pystitch: \$(pystitch --version)
    END_VERSIONS
    """

    stub:
    """
    echo '{}' > plan.json
    printf '0-1\\n2-3\\n' > batches.txt

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        pystitch: \$(pystitch --version)
    END_VERSIONS
    """
}
