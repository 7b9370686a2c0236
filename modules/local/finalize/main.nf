// finalize: regions table, seam QC, pictures and summary, then the finished
// label image is hard-linked from the plan's staging folder into this task's
// directory (the staged copy stays, so that a retried or resumed FINALIZE finds
// it), next to its report: <sample>/labels.zarr and <sample>/labels_report. publishDir (conf/modules.config) publishes both to
// <outdir>/<sample>/. The image is staged only so that container engines mount
// it: the QC pictures read it through the absolute path recorded in plan.json.
// The summary names the published paths (--published-in), not this task's.
process FINALIZE {
    tag "${meta.id}"
    label 'process_medium'
    container "${params.container_cpu}"

    input:
    tuple val(meta), path(plan), path(image, stageAs: 'image/*'), path(lut), path(stats, stageAs: 'stats/*')

    output:
    tuple val(meta), path("${meta.id}/labels.zarr"), path("${meta.id}/labels_report"), emit: results
    tuple val(meta), path("${meta.id}/labels_report/summary.json")                 , emit: summary
    tuple val("${task.process}"), val('pystitch'), eval('pystitch --version'), topic: versions, emit: versions_pystitch

    when:
    task.ext.when == null || task.ext.when

    script:
    // the step's options from the parameters (meta.args, built from nextflow_schema.json), then ext.args
    def args = [ meta.args?.get('finalize'), task.ext.args ].findAll { a -> a }.join(' ')
    def outdir = params.outdir.toString().replaceAll('/+$', '')
    if (outdir ==~ /^[A-Za-z][A-Za-z0-9+.-]*:\/\/.*/) {
        // an object-store --outdir: finalize publishes there itself (root metadata and summary.json last);
        // the task keeps the label image's URL and a copy of the summary
        """
        # zarr's codec threads: the cores this task asked for (an executor may not pin it to them)
        export ZARR_THREADING__MAX_WORKERS=\${ZARR_THREADING__MAX_WORKERS:-${task.cpus}}
        mkdir -p ${meta.id}/labels_report
        pystitch finalize \\
            ${plan} \\
            --lut ${lut} \\
            --stats stats \\
            --output '${outdir}/${meta.id}/labels.zarr' \\
            --report-dir '${outdir}/${meta.id}/labels_report' \\
            ${args} > published.txt
        head -n 1 published.txt > ${meta.id}/labels.zarr
        python3 -m pystitch.storage.remote cat '${outdir}/${meta.id}/labels_report/summary.json' > ${meta.id}/labels_report/summary.json
        """
    } else {
        """
        # zarr's codec threads: the cores this task asked for (an executor may not pin it to them)
        export ZARR_THREADING__MAX_WORKERS=\${ZARR_THREADING__MAX_WORKERS:-${task.cpus}}
        mkdir -p ${meta.id}
        pystitch finalize \\
            ${plan} \\
            --lut ${lut} \\
            --stats stats \\
            --output ${meta.id}/labels.zarr \\
            --report-dir ${meta.id}/labels_report \\
            --published-in '${file(outdir)}' \\
            ${args}
        """
    }

    stub:
    """
    mkdir -p ${meta.id}/labels.zarr ${meta.id}/labels_report
    echo '{}' > ${meta.id}/labels_report/summary.json
    """
}
