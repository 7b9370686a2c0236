#!/usr/bin/env nextflow
/*
 * pystitch: segment images larger than memory block by block and stitch the
 * per-block labels into one label image with globally consistent, sequential,
 * deterministic ids.
 *
 *   nextflow run main.nf -profile test                      # built-in example image
 *   nextflow run main.nf --input image.zarr --outdir results \
 *       --block_shape 64,256,256 --halo 8,16,16 --threshold 500
 *   nextflow run main.nf --help                             # the parameters
 *
 * Parameters: nextflow_schema.json; usage: docs/usage.md; outputs: docs/output.md.
 */

include { PYSTITCH                } from './workflows/pystitch'
include { PIPELINE_INITIALISATION } from './subworkflows/local/utils_pystitch'
include { PIPELINE_COMPLETION     } from './subworkflows/local/utils_pystitch'
include { isUrl                   } from './subworkflows/local/utils_pystitch'

workflow {

    main:
    PIPELINE_INITIALISATION()

    PYSTITCH(
        PIPELINE_INITIALISATION.out.images,
        PIPELINE_INITIALISATION.out.staging_dir,
        PIPELINE_INITIALISATION.out.blocks_per_task
    )

    PIPELINE_COMPLETION(params.outdir)

    workflow.onComplete = {
        if (workflow.success) {
            log.info("pystitch: done. Label images and reports are in ${isUrl(params.outdir) ? params.outdir : file(params.outdir)}/<sample>/ " +
                "(labels.zarr, labels_report/).")
        } else if (workflow.errorMessage) {
            log.info("pystitch: failed. Fix the error above, then run the same command with -resume: finished tasks are not run again.")
        }
    }
}
