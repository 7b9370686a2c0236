// face-pairs: find the objects of neighbouring blocks that are one object, for
// one batch of blocks. It reads the face slabs of the batch and of its neighbours
// from the staging store, so it gets the manifests of the whole image.
process FACE_PAIRS {
    tag "${meta.id}:${blocks}"
    label 'process_low'
    container "${params.container_cpu}"

    input:
    tuple val(meta), path(plan), path(manifests), val(blocks)

    output:
    tuple val(meta), path("pairs-*.npz"), emit: pairs
    path "versions.yml"                 , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    face-pairs \\
        ${plan} \\
        --blocks '${blocks}' \\
        --manifests ${manifests} \\
        --out . \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        pystitch: \$(pystitch --version)
    END_VERSIONS
    """

    stub:
    def ids = blocks.toString().tokenize(',-')
    def name = String.format('pairs-%06d-%06d.npz', ids.first() as long, ids.last() as long)
    """
    touch ${name}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        pystitch: \$(pystitch --version)
    END_VERSIONS
    """
}
