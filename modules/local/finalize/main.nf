// finalize: regions table and summary, then publish the label image and the
// report at the paths recorded in plan.json (an atomic move out of the plan's
// work dir). A copy of summary.json is emitted as the task's output.
process FINALIZE {
    tag "${meta.id}"
    label 'process_medium'
    container "${params.container_cpu}"

    input:
    tuple val(meta), path(plan), path(lut), path(stats, stageAs: 'stats/*')

    output:
    tuple val(meta), path("summary.json"), emit: summary
    path "versions.yml"                  , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    pystitch finalize \\
        ${plan} \\
        --lut ${lut} \\
        --stats stats \\
        ${args} > finalize.out
    # finalize prints the output path, then the report directory
    cp "\$(tail -n 1 finalize.out)/summary.json" summary.json

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        pystitch: \$(pystitch --version)
    END_VERSIONS
    """

    stub:
    """
    echo '{}' > summary.json

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        pystitch: \$(pystitch --version)
    END_VERSIONS
    """
}
