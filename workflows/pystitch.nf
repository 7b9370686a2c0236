/*
 * PYSTITCH: segment every image block by block and stitch the labels.
 *
 *   PLAN_BLOCKS ─┬─ batches ─► SEGMENT_BLOCK ─► (per image) GATHER_MANIFESTS
 *                │                                        │
 *                ├─ batches + manifests.jsonl ─► FACE_PAIRS ─► (per image) RESOLVE
 *                │                                                    │
 *                └─ batches + lut.zarr ─► APPLY_LUT ─► (per image) FINALIZE
 *
 * One task handles a batch of `blocks_per_task` blocks (listed by `pystitch
 * batches`, blocks planned empty left out), so 10^5 blocks are not 10^5 jobs.
 * Per-image steps wait only for the batches of their own image: the results of
 * a batch step are gathered with groupKey(meta, number of batches) + groupTuple,
 * never with a global collect(), so images of one run progress independently
 * and their ids never depend on each other.
 *
 * Only small files travel through channels (plan.json, manifests, pairs, lut,
 * statistics): the image, the staging store and the partial output are reached
 * through the absolute paths in plan.json, so -resume works task by task.
 */

include { PLAN_BLOCKS      } from '../modules/local/plan_blocks'
include { SEGMENT_BLOCK    } from '../modules/local/segment_block'
include { GATHER_MANIFESTS } from '../modules/local/gather_manifests'
include { FACE_PAIRS       } from '../modules/local/face_pairs'
include { RESOLVE          } from '../modules/local/resolve'
include { APPLY_LUT        } from '../modules/local/apply_lut'
include { FINALIZE         } from '../modules/local/finalize'

/*
 * [ meta, files ] items of one batch step -> one [ meta, [ files of every batch ] ]
 * per image, emitted as soon as that image's last batch is done. The files are
 * sorted by name (<kind>-<first block>-<last block>): tasks finish in any order,
 * and an input list in another order would be another task hash for -resume.
 */
def gatherPerImage(ch_items, ch_counts) {
    return ch_items
        .combine(ch_counts, by: 0)
        .map { meta, files, n -> [ groupKey(meta, n), files ] }
        .groupTuple()
        .map { key, files -> [ key.getGroupTarget(), files.flatten().sort { it.name } ] }
}

workflow PYSTITCH {

    take:
    ch_images // channel: [ val(meta), path(image) ]

    main:
    ch_versions = Channel.empty()
    def outdir = file(params.outdir).toAbsolutePath().normalize()

    //
    // Plan every image; its final output goes to <outdir>/<id>/labels.zarr and
    // the report to <outdir>/<id>/labels_report (written by FINALIZE itself).
    //
    PLAN_BLOCKS(
        ch_images.map { meta, image -> [ meta, image, "${outdir}/${meta.id}".toString() ] },
        params.blocks_per_task
    )
    ch_versions = ch_versions.mix(PLAN_BLOCKS.out.versions.first())

    ch_plan = PLAN_BLOCKS.out.plan // [ meta, plan.json ]

    // [ meta, [ batch specs ] ]: one line of `pystitch batches` per task
    ch_specs = PLAN_BLOCKS.out.batches
        .map { meta, txt -> [ meta, txt.readLines()*.trim().findAll { it } ] }

    // [ meta, number of batches ]: the group size of every per-image gather
    ch_counts = ch_specs.map { meta, specs -> [ meta, specs.size() ] }

    // [ meta, plan.json, image, spec ]: the fan-out
    ch_batches = ch_plan
        .join(ch_images)
        .join(ch_specs)
        .flatMap { meta, plan, image, specs -> specs.collect { spec -> [ meta, plan, image, spec ] } }

    //
    // Segment each batch; gather its manifests per image into one JSON Lines file
    //
    SEGMENT_BLOCK(ch_batches)
    ch_versions = ch_versions.mix(SEGMENT_BLOCK.out.versions.first())

    GATHER_MANIFESTS(gatherPerImage(SEGMENT_BLOCK.out.manifests, ch_counts))
    ch_versions = ch_versions.mix(GATHER_MANIFESTS.out.versions.first())
    ch_manifests = GATHER_MANIFESTS.out.manifests // [ meta, manifests.jsonl ]

    //
    // Pairs across the faces of each batch (with the manifests of the whole image)
    //
    FACE_PAIRS(
        ch_batches
            .combine(ch_manifests, by: 0)
            .map { meta, plan, image, spec, manifests -> [ meta, plan, manifests, spec ] }
    )
    ch_versions = ch_versions.mix(FACE_PAIRS.out.versions.first())

    //
    // Resolve once per image, then relabel each batch
    //
    RESOLVE(
        ch_plan
            .join(ch_manifests)
            .join(gatherPerImage(FACE_PAIRS.out.pairs, ch_counts))
    )
    ch_versions = ch_versions.mix(RESOLVE.out.versions.first())

    APPLY_LUT(
        ch_batches
            .combine(RESOLVE.out.lut, by: 0)
            .map { meta, plan, image, spec, lut -> [ meta, plan, lut, spec ] }
    )
    ch_versions = ch_versions.mix(APPLY_LUT.out.versions.first())

    //
    // Regions table, summary, publish the output and the report
    //
    FINALIZE(
        ch_plan
            .join(RESOLVE.out.lut)
            .join(gatherPerImage(APPLY_LUT.out.stats, ch_counts))
    )
    ch_versions = ch_versions.mix(FINALIZE.out.versions.first())

    emit:
    summary  = FINALIZE.out.summary // channel: [ val(meta), path(summary.json) ]
    resolved = RESOLVE.out.json     // channel: [ val(meta), path(resolve.json) ]
    versions = ch_versions          // channel: [ path(versions.yml) ]
}
