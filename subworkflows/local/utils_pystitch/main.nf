/*
 * Start and end of a pystitch run: parameter validation (no plugin: plain Groovy,
 * run while the workflow is being built, so a bad parameter stops the run before
 * any task starts), the input channel (one image, a samplesheet, or the built-in
 * example) and the completion message.
 */

include { EXAMPLE_IMAGE } from '../../../modules/local/example_image'

// every parameter of the pipeline (nextflow.config); others draw a warning
def knownParams() {
    return [
        'input', 'outdir', 'block_shape', 'halo', 'backend', 'threshold', 'sigma', 'connectivity',
        'rule', 'min_iou', 'blocks_per_task', 'backend_args', 'label_dtype', 'array_path', 'level',
        'channel', 'channel_axis', 'timepoint', 'overwrite', 'staging_dir', 'example_shape',
        'output_format', 'ngff_version', 'pyramid_levels', 'container_cpu', 'container_gpu',
        'pattern', 'scene', 'voxel_size', 'unit',
    ]
}

def backends()    { return ['threshold', 'callable', 'cellpose'] }
def rules()       { return ['exact', 'match', 'none'] }
def labelDtypes() { return ['auto', 'uint16', 'uint32', 'uint64'] }

def isBlank(value) {
    return value == null || (value instanceof CharSequence && value.toString().trim().isEmpty())
}

// `1`, `16,64,64`: one integer or one per axis (2-D or 3-D), each >= minimum
def isShape(value, int minimum) {
    if (value == null || value instanceof Boolean) return false
    def text = value.toString().trim()
    if (!(text ==~ /\d+(\s*,\s*\d+){0,2}/)) return false
    return text.tokenize(',').every { it.trim().toLong() >= minimum }
}

def isNumber(value) {
    if (value instanceof Number) return true
    if (value instanceof Boolean || value == null) return false
    return value.toString().trim() ==~ /[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?/
}

def isInteger(value, long minimum) {
    if (value instanceof Boolean || value == null) return false
    def text = value.toString().trim()
    return (text ==~ /[-+]?\d+/) && text.toLong() >= minimum
}

/*
 * Check every parameter; all problems are reported at once, then the run stops
 * (non-zero exit) before any task has been submitted.
 */
def validateParameters() {
    def errors = []

    if (isBlank(params.input) || params.input instanceof Boolean) {
        errors << "Missing --input: give an image (zarr, OME-Zarr or TIFF), a samplesheet CSV with the columns " +
            "sample,image (optional: array_path,level,channel), or 'example' for the built-in test image."
    } else if (params.input != 'example' && isGlob(params.input.toString()) && !files(params.input.toString())) {
        errors << "--input ${params.input}: no file matches. Expected a glob of TIFF planes (quoted), e.g. 'stack/plane_*.tif'."
    } else if (params.input != 'example' && !isGlob(params.input.toString()) && !file(params.input.toString()).exists()) {
        errors << "--input ${params.input}: no such file or directory (${file(params.input.toString())}). " +
            "Expected an image, a samplesheet CSV or 'example'."
    }
    if (isBlank(params.outdir) || params.outdir instanceof Boolean) {
        errors << "Missing --outdir: the directory the label images and reports are written to."
    } else if (params.outdir.toString() ==~ /^[A-Za-z][A-Za-z0-9+.-]*:\/\/.*/) {
        errors << "--outdir must be a path on a (shared) filesystem; got '${params.outdir}' (pystitch writes its output in place, object stores are not supported)."
    }
    if (!isShape(params.block_shape, 1)) {
        errors << "--block_shape expects one positive integer or one per axis, separated by commas (e.g. 64,256,256). Got '${params.block_shape}'."
    }
    if (params.halo != null && !isShape(params.halo, 0)) {
        errors << "--halo expects one integer >= 0 or one per axis, separated by commas (e.g. 8,16,16). Got '${params.halo}'."
    }
    if (!(params.backend in backends())) {
        errors << "Unknown --backend '${params.backend}'. Expected one of: ${backends().join(', ')}."
    }
    if (params.backend == 'threshold') {
        if (params.threshold == null || params.threshold instanceof Boolean) {
            errors << "The threshold backend needs --threshold: a number, or 'otsu' for one Otsu threshold computed for the whole image."
        } else if (!isNumber(params.threshold) && params.threshold.toString().trim().toLowerCase() != 'otsu') {
            errors << "--threshold expects a number or 'otsu'. Got '${params.threshold}'."
        }
        if (params.sigma != null && !(params.sigma instanceof Number) &&
                !(params.sigma.toString().tokenize(',').every { isNumber(it) && it.trim().toDouble() >= 0 })) {
            errors << "--sigma expects a number >= 0 or one per axis, separated by commas (e.g. 0,1,1). Got '${params.sigma}'."
        }
        if (params.connectivity != null && !(params.connectivity.toString().trim() in ['1', '2', '3', 'full'])) {
            errors << "--connectivity expects 1, 2, 3 or 'full'. Got '${params.connectivity}'."
        }
    } else if (params.backend in backends()) {
        ['threshold', 'sigma', 'connectivity'].each { name ->
            if (params[name] != null) {
                log.warn "--${name} applies to the threshold backend only; ignored with --backend ${params.backend}."
            }
        }
    }
    if (params.backend == 'callable' && !(params.backend_args?.toString()?.contains('--function'))) {
        errors << "The callable backend needs its function: --backend_args='--function file.py:function' (or module:function; add --kwargs '{...}' for keyword arguments)."
    }
    if (params.backend_args != null && params.backend_args instanceof Boolean) {
        errors << "--backend_args expects the extra plan-blocks arguments as one string, e.g. --backend_args='--function seg.py:run'."
    }
    if (params.rule != null && !(params.rule in rules())) {
        errors << "Unknown --rule '${params.rule}'. Expected one of: ${rules().join(', ')} (or leave it unset for the backend's default)."
    }
    if (params.min_iou != null && !(isNumber(params.min_iou) && params.min_iou.toString().toDouble() > 0 && params.min_iou.toString().toDouble() <= 1)) {
        errors << "--min_iou expects a number in (0, 1]. Got '${params.min_iou}'."
    }
    if (!isInteger(params.blocks_per_task, 1)) {
        errors << "--blocks_per_task expects an integer >= 1 (blocks per task). Got '${params.blocks_per_task}'."
    }
    if (!(params.label_dtype in labelDtypes())) {
        errors << "Unknown --label_dtype '${params.label_dtype}'. Expected one of: ${labelDtypes().join(', ')}."
    }
    if (params.level != null && !isInteger(params.level, 0)) {
        errors << "--level expects an integer >= 0 (0 is full resolution). Got '${params.level}'."
    }
    if (params.timepoint != null && !isInteger(params.timepoint, 0)) {
        errors << "--timepoint expects an integer >= 0. Got '${params.timepoint}'."
    }
    if (params.channel_axis != null && !isInteger(params.channel_axis, -4)) {
        errors << "--channel_axis expects an integer (an axis index). Got '${params.channel_axis}'."
    }
    if (params.channel != null && !isChannel(params.channel)) {
        errors << "--channel expects a channel index or several separated by commas (e.g. 0,1). Got '${params.channel}'."
    }
    if (params.output_format != null && !(params.output_format in ['ome-zarr', 'zarr'])) {
        errors << "Unknown --output_format '${params.output_format}'. Expected ome-zarr or zarr."
    }
    if (params.ngff_version != null && !(params.ngff_version.toString() in ['0.4', '0.5'])) {
        errors << "Unknown --ngff_version '${params.ngff_version}'. Expected 0.4 or 0.5."
    }
    if (params.pyramid_levels != null && !isInteger(params.pyramid_levels, 1)) {
        errors << "--pyramid_levels expects an integer >= 1. Got '${params.pyramid_levels}'."
    }
    if (!(params.overwrite instanceof Boolean)) {
        errors << "--overwrite expects true or false. Got '${params.overwrite}'."
    }
    if (params.input == 'example' && !isShape(params.example_shape, 1)) {
        errors << "--example_shape expects 2 or 3 positive integers separated by commas (e.g. 24,96,96). Got '${params.example_shape}'."
    }

    // a misspelt parameter (--blockshape, or --block-shape which Nextflow turns into blockShape) is silently unused
    def normal = { String name -> name.replaceAll(/[-_]/, '').toLowerCase() }
    def known = knownParams().collect { normal(it) } as Set
    params.keySet().findAll { !(normal(it) in known) }.each { name ->
        log.warn "Unknown parameter --${name} (ignored). Parameters are written in snake_case, e.g. --block_shape."
    }
    params.keySet().findAll { it != normal(it) && !(it in knownParams()) && normal(it) in known }.each { name ->
        errors << "Parameter --${name} is not spelt as the pipeline spells it: write it in snake_case (e.g. --block_shape, --blocks_per_task)."
    }

    if (errors) {
        error("Invalid parameters:\n  - " + errors.join('\n  - ') + "\nSee the parameters table in README.md (section Nextflow pipeline).")
    }
}

def isChannel(value) {
    if (value instanceof Boolean) return false
    return value.toString().trim() ==~ /\d+(\s*,\s*\d+)*/
}

// a sample id usable as a directory name
// a glob of plane files ('stack/plane_*.tif'), not one path
def isGlob(String input) {
    return input.contains('*') || input.contains('?') || input.contains('[')
}

def imageId(String name) {
    def stem = name.replaceAll(/(?i)(\.ome)?\.(zarr|tiff?|n5)\/?$/, '')
    return stem.replaceAll(/[^A-Za-z0-9._-]/, '_')
}

// one CSV line -> fields (double quotes allowed, for values such as "0,1")
def splitCsvLine(String line) {
    def fields = []
    def current = new StringBuilder()
    boolean quoted = false
    int i = 0
    while (i < line.length()) {
        def c = line.substring(i, i + 1)
        if (quoted) {
            if (c == '"' && i + 1 < line.length() && line.substring(i + 1, i + 2) == '"') {
                current.append('"')
                i++
            } else if (c == '"') {
                quoted = false
            } else {
                current.append(c)
            }
        } else if (c == '"') {
            quoted = true
        } else if (c == ',') {
            fields << current.toString().trim()
            current = new StringBuilder()
        } else {
            current.append(c)
        }
        i++
    }
    fields << current.toString().trim()
    return fields
}

/*
 * The samplesheet: columns sample,image and optionally array_path,level,channel
 * (an empty cell takes the value of the parameter of that name). Relative image
 * paths are resolved against the launch directory. Returns [ [ meta, image ], ... ].
 */
def readSamplesheet(sheet) {
    def lines = sheet.readLines().findAll { it.trim() && !it.trim().startsWith('#') }
    if (!lines) {
        error("The samplesheet ${sheet} is empty: expected a header line 'sample,image' and one line per image.")
    }
    def header = splitCsvLine(lines[0]).collect { it.toLowerCase() }
    def allowed = ['sample', 'image', 'array_path', 'level', 'channel']
    def problems = []
    ['sample', 'image'].findAll { !(it in header) }.each {
        problems << "the header has no column '${it}' (found: ${header.join(',')}; expected sample,image and optionally array_path,level,channel)"
    }
    header.findAll { !(it in allowed) }.each { problems << "unknown column '${it}' (allowed: ${allowed.join(', ')})" }
    def rows = []
    def seen = [:]
    if (!problems) {
        lines.drop(1).eachWithIndex { line, idx ->
            def where = "line ${idx + 2}"
            def cells = splitCsvLine(line)
            if (cells.size() != header.size()) {
                problems << "${where}: ${cells.size()} fields, the header has ${header.size()}"
                return
            }
            def row = [header, cells].transpose().collectEntries { k, v -> [ (k): v ?: null ] }
            def sample = row.sample
            if (!sample) {
                problems << "${where}: empty sample"
            } else if (!(sample ==~ /[A-Za-z0-9._-]+/)) {
                problems << "${where}: sample '${sample}' may hold only letters, digits, '.', '_' and '-' (it names the output folder)"
            } else if (seen.containsKey(sample)) {
                problems << "${where}: sample '${sample}' repeats line ${seen[sample]}"
            } else {
                seen[sample] = idx + 2
            }
            def image = row.image ? file(row.image) : null
            if (!row.image) {
                problems << "${where}: empty image"
            } else if (!image.exists()) {
                problems << "${where}: image not found: ${image}"
            }
            def level = row.level ?: params.level
            if (level != null && !isInteger(level, 0)) {
                problems << "${where}: level expects an integer >= 0, got '${level}'"
            }
            def channel = row.channel ?: params.channel
            if (channel != null && !isChannel(channel)) {
                problems << "${where}: channel expects an index or indices separated by commas, got '${channel}'"
            }
            def meta = [
                id        : sample,
                array_path: row.array_path ?: params.array_path,
                level     : level,
                channel   : channel,
            ]
            rows << [ meta, image ]
        }
        if (!rows && !problems) {
            problems << "no image listed (only a header)"
        }
    }
    if (problems) {
        error("Invalid samplesheet ${sheet}:\n  - " + problems.join('\n  - '))
    }
    return rows
}

/*
 * --input: one image, a samplesheet (*.csv), or 'example'.
 * Returns [ [ meta, image ], ... ] (not used for 'example').
 */
def imagesFromInput(String input) {
    if (isGlob(input)) {
        // planes are read where they are: the folder is the task input, meta.glob the file names in it
        def glob = new File(input)
        def folder = file(glob.parent ?: '.')
        def meta = [
            id        : imageId(folder.name),
            array_path: params.array_path,
            level     : params.level,
            channel   : params.channel,
            glob      : glob.name,
        ]
        return [ [ meta, folder ] ]
    }
    def path = file(input)
    if (!path.exists()) {
        error("--input ${input}: no such file or directory (${path}). Expected an image, a samplesheet CSV or 'example'.")
    }
    if (path.name.toLowerCase().endsWith('.csv')) {
        return readSamplesheet(path)
    }
    def meta = [
        id        : imageId(path.name),
        array_path: params.array_path,
        level     : params.level,
        channel   : params.channel,
    ]
    return [ [ meta, path ] ]
}

workflow PIPELINE_INITIALISATION {

    main:
    validateParameters()

    ch_versions = Channel.empty()
    if (params.input == 'example') {
        EXAMPLE_IMAGE(Channel.of([ [ id: 'example' ], params.example_shape.toString() ]))
        ch_images   = EXAMPLE_IMAGE.out.image
        ch_versions = ch_versions.mix(EXAMPLE_IMAGE.out.versions)
    } else {
        ch_images = Channel.fromList(imagesFromInput(params.input.toString()))
    }

    emit:
    images   = ch_images   // channel: [ val(meta), path(image) ]
    versions = ch_versions // channel: [ path(versions.yml) ]
}

/*
 * Collate the versions.yml of every step into <outdir>/pipeline_info.
 */
workflow PIPELINE_COMPLETION {

    take:
    ch_versions // channel: [ path(versions.yml) ]

    main:
    ch_versions
        .collectFile(
            name     : 'software_versions.yml',
            storeDir : "${params.outdir}/pipeline_info",
            sort     : true,
            newLine  : true,
        )
}
