// apply-lut: write the final ids of one batch of blocks into the output chunks
// and their region statistics (stats-<first>-<last>.npz).
process APPLY_LUT {
    tag "${meta.id}:${blocks}"
    label 'process_low'
    container "${params.container_cpu}"

    input:
    tuple val(meta), path(plan), path(lut), val(blocks)

    output:
    tuple val(meta), path("stats-*.npz"), emit: stats
    path "versions.yml"                 , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    apply-lut \\
        ${plan} \\
        --blocks '${blocks}' \\
        --lut ${lut} \\
        --out . \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        pystitch: \$(pystitch --version)
    END_VERSIONS
    """

    stub:
    def ids = blocks.toString().tokenize(',-')
    def name = String.format('stats-%06d-%06d.npz', ids.first() as long, ids.last() as long)
    """
    touch ${name}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        pystitch: \$(pystitch --version)
    END_VERSIONS
    """
}
