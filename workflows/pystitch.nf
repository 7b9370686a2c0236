/*
 * PYSTITCH: segment every image block by block and stitch the labels.
 *
 *   PLAN_BLOCKS ─┬─ batches ─► SEGMENT_BLOCK ─► (per image) GATHER_MANIFESTS
 *                │                                        │
 *                ├─ batches + manifests.jsonl ─► FACE_PAIRS ─► (per image) RESOLVE
 *                │                                                    │
 *                └─ batches + lut.zarr ─► APPLY_LUT ─► (per image) FINALIZE
 *
 * With --rule flows (Cellpose's dynamics followed across blocks: no seams, no
 * matching) three batch steps (the network; the trajectories; the labels from
 * the seeds) and two per-image steps (seeds; filters) take the place of
 * segment, face-pairs and resolve, and write the same lut.zarr:
 *
 *   PLAN_BLOCKS ─ batches ─► PREDICT_FLOWS (the network; the only GPU task)
 *               ─ batches ─► FOLLOW_BLOCKS (end points of each block's trajectories)
 *               ─► (per image) SEED_FLOWS (seeds in the histogram of all end points: the region map)
 *               ─ batches ─► ASSIGN_BLOCKS (each block's labels from the region map, per-object stats)
 *               ─► (per image) FOLLOW_FLOWS (Cellpose's filters on whole objects) ─► lut.zarr
 *               ─► APPLY_LUT (every block) ─► FINALIZE
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
 * through the absolute paths in plan.json, so -resume works task by task. The
 * stores live in a folder of the staging directory per image, run and
 * settings (never in a task directory); FINALIZE moves the finished label
 * image into its own task directory, from where publishDir publishes it.
 *
 * Each batch task gets the memory, time and cores that `python -m pystitch.resources`
 * estimated from the plan (block size and backend) for its step.
 */

include { PLAN_BLOCKS      } from '../modules/local/plan_blocks'
include { SEGMENT_BLOCK    } from '../modules/local/segment_block'
include { GATHER_MANIFESTS } from '../modules/local/gather_manifests'
include { FACE_PAIRS       } from '../modules/local/face_pairs'
include { RESOLVE          } from '../modules/local/resolve'
include { PREDICT_FLOWS    } from '../modules/local/predict_flows'
include { FOLLOW_BLOCKS    } from '../modules/local/follow_blocks'
include { FOLLOW_FLOWS     } from '../modules/local/follow_flows'
include { SEED_FLOWS       } from '../modules/local/seed_flows'
include { ASSIGN_BLOCKS    } from '../modules/local/assign_blocks'
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
        .map { key, files -> [ key.getGroupTarget(), files.flatten().sort { f -> f.name } ] }
}

workflow PYSTITCH {

    take:
    ch_images          // channel: [ val(meta), path(image) ]
    ch_staging_dir     // value channel: path of the run's staging directory
    ch_blocks_per_task // value channel: blocks per batch task

    main:
    //
    // Plan every image; its stores go to <staging_dir>/<id>-<key>, the key being
    // one per run (-resume keeps it), image and settings
    //
    PLAN_BLOCKS(
        ch_images
            .combine(ch_staging_dir)
            .map { meta, image, staging ->
                def key = [ workflow.sessionId, image.toString(), meta ].toString().md5().substring(0, 12)
                [ meta, image, "${staging}/${meta.id}-${key}".toString() ]
            },
        ch_blocks_per_task
    )

    ch_plan = PLAN_BLOCKS.out.plan // [ meta, plan.json ]

    // [ meta, [ batch specs ] ]: one line of `pystitch batches` per task
    ch_specs = PLAN_BLOCKS.out.batches
        .map { meta, txt -> [ meta, txt.readLines()*.trim().findAll { line -> line } ] }

    // [ meta, { step: [memory_mb, minutes, cpus] } ]. JsonSlurperClassic builds plain maps at once: the
    // lazy maps of JsonSlurper fill themselves on first read, and the tasks of one image read the same
    // map from several threads (one saw memory_mb as null while another was filling it)
    ch_estimates = PLAN_BLOCKS.out.resources
        .map { meta, json -> [ meta, new groovy.json.JsonSlurperClassic().parseText(json.text) ] }

    // [ meta, number of batches ]: the group size of every per-image gather
    ch_counts = ch_specs.map { meta, specs -> [ meta, specs.size() ] }

    // [ meta, plan.json, image, spec, estimates ]: the fan-out
    ch_batches = ch_plan
        .join(ch_images)
        .join(ch_specs)
        .join(ch_estimates)
        .flatMap { meta, plan, image, specs, estimates -> specs.collect { spec -> [ meta, plan, image, spec, estimates ] } }

    if (params.rule == 'flows') {
        //
        // The flows rule: the network over each batch of blocks; when an image's flow store is complete, the
        // trajectories of each batch; the seeds of each image; the labels of each batch from them; then
        // Cellpose's filters over the whole objects of each image
        //
        PREDICT_FLOWS(
            ch_batches.map { meta, plan, image, spec, estimates -> [ meta, plan, image, spec, estimates['predict-flows'] ] }
        )

        FOLLOW_BLOCKS(
            ch_batches
                .combine(gatherPerImage(PREDICT_FLOWS.out.json, ch_counts), by: 0)
                .map { meta, plan, _image, spec, estimates, predicted -> [ meta, plan, predicted, spec, estimates['follow-blocks'] ] }
        )

        SEED_FLOWS(
            ch_plan
                .join(gatherPerImage(FOLLOW_BLOCKS.out.json, ch_counts))
                .join(ch_estimates)
                .map { meta, plan, followed, estimates -> [ meta, plan, followed, estimates['seed-flows'] ] }
        )

        ASSIGN_BLOCKS(
            ch_batches
                .combine(SEED_FLOWS.out.json, by: 0)
                .map { meta, plan, _image, spec, estimates, seeds -> [ meta, plan, seeds, spec, estimates['assign-blocks'] ] }
        )

        FOLLOW_FLOWS(
            ch_plan
                .join(gatherPerImage(ASSIGN_BLOCKS.out.json, ch_counts))
                .join(ch_estimates)
                .map { meta, plan, assigned, estimates -> [ meta, plan, assigned, estimates['follow-flows'] ] }
        )
        ch_lut      = FOLLOW_FLOWS.out.lut
        ch_resolved = FOLLOW_FLOWS.out.json
    } else {
        //
        // Segment each batch; gather its manifests per image into one JSON Lines file
        //
        SEGMENT_BLOCK(
            ch_batches.map { meta, plan, image, spec, estimates -> [ meta, plan, image, spec, estimates['segment-block'] ] }
        )

        GATHER_MANIFESTS(gatherPerImage(SEGMENT_BLOCK.out.manifests, ch_counts))
        ch_manifests = GATHER_MANIFESTS.out.manifests // [ meta, manifests.jsonl ]

        //
        // Pairs across the faces of each batch (with the manifests of the whole image)
        //
        FACE_PAIRS(
            ch_batches
                .combine(ch_manifests, by: 0)
                .map { meta, plan, _image, spec, estimates, manifests -> [ meta, plan, manifests, spec, estimates['face-pairs'] ] }
        )

        //
        // Resolve once per image, then relabel each batch
        //
        RESOLVE(
            ch_plan
                .join(ch_manifests)
                .join(gatherPerImage(FACE_PAIRS.out.pairs, ch_counts))
        )
        ch_lut      = RESOLVE.out.lut  // [ meta, lut.zarr ]
        ch_resolved = RESOLVE.out.json // [ meta, resolve.json ]
    }

    APPLY_LUT(
        ch_batches
            .combine(ch_lut, by: 0)
            .map { meta, plan, image, spec, estimates, lut -> [ meta, plan, image, lut, spec, estimates['apply-lut'] ] }
    )

    //
    // Regions table, summary and the finished label image, published by publishDir
    //
    FINALIZE(
        ch_plan
            .join(ch_images)
            .join(ch_lut)
            .join(gatherPerImage(APPLY_LUT.out.stats, ch_counts))
    )

    results  = FINALIZE.out.results
    summary  = FINALIZE.out.summary
    resolved = ch_resolved

    // (emit by name only: see subworkflows/local/utils_pystitch)
    emit:
    results  // channel: [ val(meta), path(labels.zarr), path(labels_report) ]
    summary  // channel: [ val(meta), path(summary.json) ]
    resolved // channel: [ val(meta), path(resolve.json) ]
}
