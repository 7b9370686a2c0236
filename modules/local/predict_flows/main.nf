// predict-flows (the flows rule): Cellpose's network over the whole image of
// one plan, block by block, into the plan's flow store (in the plan's staging
// folder, reached through plan.json). The only step of the rule that wants a
// GPU. A rerun reuses a complete flow store of the same plan. The image is
// staged only so that container engines mount it: predict-flows reads it
// through the absolute path recorded in plan.json.
process PREDICT_FLOWS {
    tag "${meta.id}"
    label 'process_gpu'
    // what `python -m pystitch.resources` estimated from the plan for this step (one task per image)
    cpus   { estimate.cpus }
    memory { "${estimate.memory_mb * task.attempt} MB" }
    time   { "${estimate.minutes * task.attempt} min" }
    // the GPU image carries torch and Cellpose
    container "${params.container_gpu}"

    input:
    tuple val(meta), path(plan), path(image), val(estimate)

    output:
    tuple val(meta), path("predict.json")                                           , emit: json
    tuple val("${task.process}"), val('pystitch'), eval('pystitch --version'), topic: versions, emit: versions_pystitch

    when:
    task.ext.when == null || task.ext.when

    script:
    // the step's options from the parameters (meta.args, built from nextflow_schema.json), then ext.args
    def args = [ meta.args?.get('predict-flows'), task.ext.args ].findAll { a -> a }.join(' ')
    """
    predict-flows \\
        ${plan} \\
        ${args} \\
        > predict.json
    """

    stub:
    """
    echo '{}' > predict.json
    """
}
