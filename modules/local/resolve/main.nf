// resolve: join the pairs of all blocks of one image into final ids (lut.zarr,
// resolve.json); also creates the (partial) output array in the plan's work dir.
// Single-threaded; memory follows the number of pairs (objects crossing seams).
process RESOLVE {
    tag "${meta.id}"
    label 'process_medium'
    container "${params.container_cpu}"

    input:
    tuple val(meta), path(plan), path(manifests), path(pairs, stageAs: 'pairs/*')

    output:
    tuple val(meta), path("lut.zarr")    , emit: lut
    tuple val(meta), path("resolve.json"), emit: json
    path "versions.yml"                  , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    resolve \\
        ${plan} \\
        --manifests ${manifests} \\
        --pairs pairs \\
        --out lut.zarr \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        pystitch: \$(pystitch --version)
    END_VERSIONS
    """

    stub:
    """
    mkdir lut.zarr
    echo '{}' > resolve.json

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        pystitch: \$(pystitch --version)
    END_VERSIONS
    """
}
