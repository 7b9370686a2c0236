/*
 * Start and end of a pystitch run.
 *
 * The parameters are described in nextflow_schema.json (generated from
 * pystitch/params.py; JSON Schema in nf-schema's layout): their types,
 * allowed values and help text, and for each option of a pystitch command the
 * steps that take it and its flag (`x-pystitch: {steps, flag, backend,
 * sample_column}`). This file reads the schema to
 *   - check `params` before any task starts (type, enum, pattern, minimum,
 *     maximum, exclusiveMinimum/Maximum, required, `if`/`then` rules,
 *     misspelt names), all problems at once, one line each;
 *   - check a samplesheet against assets/schema_input.json (also `exists`,
 *     `errorMessage`, `uniqueEntries`);
 *   - build each image's step options (meta.args[<step>], which the modules
 *     put before task.ext.args);
 *   - print `--help`.
 * No plugin: plain Groovy, run while the workflow is being built. The schema
 * stays nf-schema compatible, so a site with internet access can switch the
 * nf-schema plugin on instead.
 */

include { EXAMPLE_IMAGE } from '../../../modules/local/example_image'

// ------------------------------------------------------------------ the schema

def readJson(path) {
    return new groovy.json.JsonSlurperClassic().parseText(file(path.toString()).text)
}

// name -> property of every parameter, in the order of the schema's groups
def schemaProperties(schema) {
    def props = [:]
    schema['$defs'].each { _group, definition -> props.putAll(definition.properties ?: [:]) }
    return props
}

def schemaRequired(schema) {
    return schema['$defs'].collect { _group, definition -> definition.required ?: [] }.flatten()
}

// ------------------------------------------------------------------ values

def isBlank(value) {
    return value == null || (value instanceof CharSequence && value.toString().trim().isEmpty())
}

def isNumberText(text) {
    return text ==~ /[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?/
}

/*
 * [ problem, value ]: the value converted to the property's type (Nextflow
 * gives `--level 2` as an Integer and `--halo 8,16,16` as a String; a
 * -params-file may give either), or a problem worded for the user.
 */
def checkValue(String label, spec, value) {
    def type = spec.type ?: 'string'
    def shown = value instanceof CharSequence ? "'${value}'" : "${value}"
    def converted = value
    if (type == 'boolean') {
        if (value instanceof Boolean) {
            converted = value
        } else if (value.toString().trim().toLowerCase() in ['true', 'false']) {
            converted = value.toString().trim().toLowerCase() == 'true'
        } else {
            return [ "${label} expects true or false. Got ${shown}.", null ]
        }
    } else if (value instanceof Boolean) {
        return [ "${label} expects a value (${type}). Got a flag without one.", null ]
    } else if (type == 'integer') {
        def text = value.toString().trim()
        if (!(text ==~ /[-+]?\d+/)) {
            return [ "${label} expects an integer. Got ${shown}.", null ]
        }
        converted = text.toLong()
    } else if (type == 'number') {
        def text = value.toString().trim()
        if (!isNumberText(text)) {
            return [ "${label} expects a number. Got ${shown}.", null ]
        }
        converted = new BigDecimal(text)
    } else {
        converted = value instanceof CharSequence ? value.toString() : value.toString().replaceFirst(/\.0$/, '')
    }
    def problem = null
    if (spec['enum'] != null && !(converted.toString() in spec['enum'].collect { e -> e.toString() })) {
        problem = "${label} must be one of ${spec['enum'].join(', ')}. Got ${shown}."
    } else if (spec.pattern != null && !(converted.toString() =~ spec.pattern.toString())) {
        problem = "${label} ${shown} is not valid: expected ${spec.description ?: 'a value matching ' + spec.pattern}"
    } else if (spec.minimum != null && converted < spec.minimum) {
        problem = "${label} must be at least ${spec.minimum}. Got ${shown}."
    } else if (spec.maximum != null && converted > spec.maximum) {
        problem = "${label} must be at most ${spec.maximum}. Got ${shown}."
    } else if (spec.exclusiveMinimum != null && converted <= spec.exclusiveMinimum) {
        problem = "${label} must be greater than ${spec.exclusiveMinimum}. Got ${shown}."
    } else if (spec.exclusiveMaximum != null && converted >= spec.exclusiveMaximum) {
        problem = "${label} must be less than ${spec.exclusiveMaximum}. Got ${shown}."
    } else if (spec.exists && !isUrl(converted) && !file(converted.toString()).exists()) {
        problem = "${label} ${shown}: no such file or directory (${file(converted.toString())})."
    }
    if (problem && spec.errorMessage) {
        problem = "${label} ${shown}: ${spec.errorMessage}."
    }
    return [ problem, problem ? null : converted ]
}

// an object-store URL (s3://bucket/key): pystitch reads and writes it; Nextflow
// (without its nf-amazon plugin, which an offline install does not have) never touches it
def isUrl(value) {
    return value != null && value.toString() ==~ /^[A-Za-z][A-Za-z0-9+.-]*:\/\/.*/
}

// `block-shape`, `blockShape`, `block_shape` -> `blockshape`
def normalName(String name) {
    return name.replaceAll(/[-_]/, '').toLowerCase()
}

// Levenshtein distance, for "did you mean" suggestions
def editDistance(String a, String b) {
    if (a.isEmpty() || b.isEmpty()) {
        return a.length() + b.length()
    }
    def previous = (0..b.length()).collect { j -> j }
    (1..a.length()).each { i ->
        def current = [ i ]
        (1..b.length()).each { j ->
            def cost = a.charAt(i - 1) == b.charAt(j - 1) ? 0 : 1
            current << [ previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost ].min()
        }
        previous = current
    }
    return previous[b.length()]
}

// does `values` satisfy a schema of the form {properties: {name: {const|pattern}}, required: [...]}?
def satisfies(subschema, values) {
    def present = (subschema.required ?: []).every { name -> !isBlank(values[name]) }
    def properties = (subschema.properties ?: [:]).every { name, spec ->
        def value = values[name]
        if (isBlank(value)) {
            return true
        }
        if (spec.containsKey('const') && value.toString() != spec.const.toString()) {
            return false
        }
        return spec.pattern == null || value.toString() =~ spec.pattern.toString()
    }
    return present && properties
}

/*
 * Check every parameter against the schema; returns the converted values
 * (name -> value, null when unset). All problems are reported at once, one
 * line each, and the run stops before any task has been submitted.
 */
def validateParameters(schema) {
    def props = schemaProperties(schema)
    def errors = []
    def values = [:]
    def byNormal = props.keySet().collectEntries { name -> [ (normalName(name)): name ] }

    // names: Nextflow keeps --block-shape as `block-shape` and `blockShape`; misspelt ones are unused
    def reported = [] as Set
    params.keySet().findAll { name -> !props.containsKey(name) }.each { name ->
        def known = byNormal[normalName(name)]
        def suggestion = known ?: props.keySet().min { candidate -> editDistance(normalName(name), normalName(candidate)) }
        def distance = editDistance(normalName(name), normalName(suggestion))
        if (known && !(known in reported)) {
            reported << known
            errors << "--${name} is spelt --${known} by this pipeline (snake_case)."
        } else if (!known && distance <= 2) {
            errors << "Unknown parameter --${name}. Did you mean --${suggestion}?"
        } else if (!known) {
            log.warn "Unknown parameter --${name}: not used by pystitch (see --help)."
        }
    }

    props.each { name, spec ->
        def value = params[name]
        if (isBlank(value)) {
            values[name] = null
            return
        }
        def result = checkValue("--${name}", spec, value)
        if (result[0]) {
            errors << result[0]
        }
        values[name] = result[1]
    }
    schemaRequired(schema).findAll { name -> isBlank(params[name]) }.each { name ->
        errors << "Missing --${name}: ${props[name]?.description ?: 'required'}"
    }
    // rules between parameters: { if: <condition>, then: <requirement> }
    schema.allOf.findAll { rule -> rule['if'] != null }.each { rule ->
        if (satisfies(rule['if'], params) && !satisfies(rule['then'], params)) {
            def condition = rule['if'].properties.collect { name, spec -> "--${name} ${spec.const}" }.join(' and ')
            def needed = (rule['then'].required ?: []).collect { name ->
                def spec = rule['then'].properties?.get(name)
                spec?.containsKey('const') ? "--${name} ${spec.const}" :
                    "--${name}" + (spec?.pattern ? " with ${spec.pattern}" : '') + " (${props[name]?.description ?: ''})"
            }
            errors << "With ${condition}, give ${needed.join(' and ')}."
        }
    }
    // options of one backend only: used with it, ignored (with a warning) otherwise
    props.findAll { name, spec -> spec['x-pystitch']?.backend && values[name] != null }.each { name, spec ->
        if (values.backend != null && values.backend != spec['x-pystitch'].backend) {
            log.warn "--${name} applies to --backend ${spec['x-pystitch'].backend} only: ignored with --backend ${values.backend}."
        }
    }
    if (errors) {
        error("Invalid parameters (nextflow_schema.json; --help lists them):\n  - " + errors.join('\n  - '))
    }
    return values
}

// `--help`: the parameters of the schema, by group
def paramsHelp(schema) {
    def lines = [ "pystitch: ${schema.description}", '', 'Usage: nextflow run main.nf --input IMAGE|SAMPLESHEET.csv|example --outdir DIR [options]' ]
    schema['$defs'].each { _group, definition ->
        lines << ''
        lines << "${definition.title}: ${definition.description}"
        definition.properties.each { name, spec ->
            def shown = spec.containsKey('default') ? " [default: ${spec.default}]" : ''
            def choices = spec['enum'] ? " (${spec['enum'].join('|')})" : ''
            lines << "  --${name.padRight(18)} ${spec.type}${choices}${shown}"
            lines << "      ${spec.description}"
        }
    }
    return lines.join('\n')
}

// ------------------------------------------------------------------ step arguments

def shellQuote(value) {
    def text = value.toString()
    return text ==~ /[A-Za-z0-9._,:\/+=-]+/ ? text : "'" + text.replace("'", "'\\''") + "'"
}

/*
 * The command-line options of `step` from the parameters that the schema
 * marks with x-pystitch.steps: `flag value` for each set value; options of
 * another backend (x-pystitch.backend) are left out.
 */
def stepArguments(props, values, String step) {
    return props.findAll { _name, spec -> step in (spec['x-pystitch']?.steps ?: []) }
        .findAll { name, _spec -> values[name] != null }
        .findAll { _name, spec -> !spec['x-pystitch'].backend || values.backend == spec['x-pystitch'].backend }
        .collect { name, spec -> "${spec['x-pystitch'].flag} ${shellQuote(values[name])}" }
        .join(' ')
}

// step -> options, for every step of the schema; --backend_args (the pipeline's
// own parameter for any other plan-blocks option) comes last, as it is
def allStepArguments(props, values) {
    def steps = props.values().collect { spec -> spec['x-pystitch']?.steps ?: [] }.flatten().unique()
    def args = steps.collectEntries { step -> [ (step): stepArguments(props, values, step) ] }
    if (values.backend_args) {
        args['plan-blocks'] = [ args['plan-blocks'], values.backend_args.toString() ].findAll { a -> a }.join(' ')
    }
    return args
}

// ------------------------------------------------------------------ input

// a glob of plane files ('stack/plane_*.tif'), not one path
def isGlob(String input) {
    return input.contains('*') || input.contains('?') || input.contains('[')
}

// a sample id usable as a directory name
def imageId(String name) {
    def stem = name.replaceAll(/(?i)(\.ome)?\.(zarr|tiff?|n5)\/?$/, '')
    return stem.replaceAll(/[^A-Za-z0-9._-]/, '_')
}

// one CSV line -> fields (double quotes allowed, for values such as "0,1")
def splitCsvLine(String line) {
    def fields = []
    def current = new StringBuilder()
    def quoted = false
    def skip = false
    (0..<line.length()).each { i ->
        def c = line.charAt(i)
        if (skip) {
            skip = false
        } else if (quoted && c == '"' && i + 1 < line.length() && line.charAt(i + 1) == '"') {
            current.append('"')
            skip = true
        } else if (c == '"') {
            quoted = !quoted
        } else if (c == ',' && !quoted) {
            fields << current.toString().trim()
            current = new StringBuilder()
        } else {
            current.append(c)
        }
    }
    fields << current.toString().trim()
    return fields
}

/*
 * The rows of a samplesheet checked against assets/schema_input.json:
 * [ [ row values (column -> converted value) ], ... ]. Relative image paths
 * are resolved against the launch directory.
 */
def readSamplesheet(sheet, inputSchema) {
    def lines = sheet.readLines().findAll { line -> line.trim() && !line.trim().startsWith('#') }
    if (!lines) {
        error("The samplesheet ${sheet} is empty: expected a header line 'sample,image' and one line per image.")
    }
    def columns = inputSchema.items.properties
    def required = inputSchema.items.required ?: []
    def header = splitCsvLine(lines[0]).collect { name -> name.toLowerCase() }
    def problems = []
    required.findAll { name -> !(name in header) }.each { name ->
        problems << "the header has no column '${name}' (found: ${header.join(',')}; expected ${required.join(',')} and optionally ${(columns.keySet() - required).join(',')})"
    }
    header.findAll { name -> !columns.containsKey(name) }.each { name ->
        problems << "unknown column '${name}' (allowed: ${columns.keySet().join(', ')})"
    }
    def rows = []
    if (!problems) {
        lines.drop(1).eachWithIndex { line, idx ->
            def where = "line ${idx + 2}"
            def cells = splitCsvLine(line)
            if (cells.size() != header.size()) {
                problems << "${where}: ${cells.size()} fields, the header has ${header.size()}"
                return
            }
            def row = [:]
            [ header, cells ].transpose().each { name, cell ->
                if (cell) {
                    def spec = columns[name]
                    // an image at a URL stays a URL: pystitch reads it (checked with the others before any task)
                    def text = spec.format in ['path', 'file-path', 'directory-path'] && !isUrl(cell) ? file(cell).toString() : cell
                    def result = checkValue(name, spec, text)
                    if (result[0]) {
                        problems << "${where}: ${result[0]}"
                    }
                    row[name] = result[1]
                }
            }
            required.findAll { name -> !(name in row.keySet()) && !problems.any { p -> p.startsWith("${where}: ${name}") } }.each { name ->
                problems << "${where}: empty ${name}"
            }
            rows << row
        }
        (inputSchema.uniqueEntries ?: []).each { name ->
            rows.groupBy { row -> row[name] }.findAll { value, group -> value != null && group.size() > 1 }.each { value, _group ->
                problems << "${name} '${value}' appears more than once"
            }
        }
        if (!rows && !problems) {
            problems << "no image listed (only a header)"
        }
    }
    if (problems) {
        error("Invalid samplesheet ${sheet} (assets/schema_input.json):\n  - " + problems.join('\n  - '))
    }
    return rows
}

/*
 * --input: one image, a samplesheet (*.csv), or 'example'. Returns
 * [ [ id, image path or null, values for the image ], ... ]: the parameters,
 * overridden by the samplesheet's columns of the same name (the parameters
 * marked x-pystitch.sample_column).
 */
def imagesFromInput(String input, values, inputSchema) {
    if (input == 'example') {
        return [ [ 'example', null, values ] ]
    }
    if (isUrl(input)) {
        // read by pystitch itself (zarr's fsspec stores): Nextflow never stages it
        return [ [ imageId(input.replaceAll('/+$', '').tokenize('/').last()), input, values ] ]
    }
    if (isGlob(input)) {
        // TIFF planes are read where they are: the folder is the task input, meta.glob the file names in it
        if (!files(input)) {
            error("--input ${input}: no file matches. Expected a glob of TIFF planes (quoted), e.g. 'stack/plane_*.tif'.")
        }
        def pattern = new File(input)
        def folder = file(pattern.parent ?: '.')
        return [ [ imageId(folder.name), folder, values + [ glob: pattern.name ] ] ]
    }
    def path = file(input)
    if (!path.exists()) {
        error("--input ${input}: no such file or directory (${path}). Expected an image, a samplesheet CSV or 'example'.")
    }
    if (!path.name.toLowerCase().endsWith('.csv')) {
        return [ [ imageId(path.name), path, values ] ]
    }
    return readSamplesheet(path, inputSchema).collect { row ->
        def overrides = row.findAll { name, _value -> !(name in ['sample', 'image']) }
        [ row.sample, isUrl(row.image) ? row.image.toString() : file(row.image.toString()), values + overrides ]
    }
}

/*
 * The object-store URLs of the run checked by pystitch on this machine
 * before any task is submitted (Nextflow itself cannot reach them): each
 * image at a URL (--input or a samplesheet's) must be there, the buckets of
 * --outdir and --staging_dir must be reachable. An unsupported scheme,
 * missing credentials, an unreachable endpoint or a missing bucket stops the
 * run with pystitch's one line. Returns the outputs that already exist at a
 * URL --outdir (`absent`: the ones that must not be replaced).
 */
def checkUrls(values, entries, boolean absent) {
    def outdir = values.outdir.toString().replaceAll('/+$', '')
    def args = []
    entries.findAll { entry -> isUrl(entry[1]) }.each { entry ->
        def what = isUrl(values.input) ? '--input' : "image of sample ${entry[0]} (samplesheet ${values.input})"
        args.addAll([ '--exists', what.toString(), entry[1].toString() ])
    }
    if (isUrl(values.staging_dir)) {
        args.addAll([ '--bucket', '--staging_dir', values.staging_dir.toString() ])
    }
    if (isUrl(outdir)) {
        args.addAll([ '--bucket', '--outdir', outdir ])
        if (absent) {
            entries.each { entry -> args.addAll([ '--absent', '--outdir', "${outdir}/${entry[0]}/labels.zarr".toString() ]) }
        }
    }
    if (!args) {
        return []
    }
    def options = values.storage_options ? [ '--storage-options', values.storage_options.toString() ] : []
    def command = [ 'python3', '-m', 'pystitch.storage.remote', 'check' ] + options + args
    def out = new StringBuilder()
    def err = new StringBuilder()
    try {
        def proc = command.execute()
        proc.waitForProcessOutput(out, err)
        if (proc.exitValue() == 0) {
            return out.toString().readLines().findAll { line -> line.trim() }
        }
    } catch (Exception e) {
        err.append("No module named pystitch (${e.message})")
    }
    if (err.toString().contains('No module named')) {
        log.warn "The object-store URLs could not be checked before the run (no python3 with pystitch on this machine): the tasks check them."
        return []
    }
    def lines = err.toString().readLines().findAll { line -> line.trim() }
    error(lines ? lines.last() : "Could not check the object-store URLs: ${command.join(' ')} failed.")
}

workflow PIPELINE_INITIALISATION {

    main:
    def schema = readJson("${projectDir}/nextflow_schema.json")
    if (params.help) {
        log.info(paramsHelp(schema))
        System.exit(0)
    }
    def values = validateParameters(schema)
    def props = schemaProperties(schema)
    def entries = imagesFromInput(values.input.toString(), values, readJson("${projectDir}/assets/schema_input.json"))

    // the URLs (s3://) of the run, checked before any task; an existing result is kept unless
    // --overwrite (or -resume, which publishes only what is missing)
    def keep = !workflow.resume && !values.overwrite
    def existingUrls = checkUrls(values, entries, keep)
    if (keep) {
        def existing = isUrl(values.outdir) ? existingUrls
            : entries.collect { entry -> file("${values.outdir}/${entry[0]}/labels.zarr") }.findAll { path -> path.exists() }
        if (existing) {
            error("${existing.join(', ')} exists. Choose another --outdir, add --overwrite true to replace it, or -resume the run that wrote it.")
        }
    }

    // the big stores: not in a task directory (every step writes to them); created here so containers can mount it
    // (at a URL: the big stores go there, the plans' small files to <work dir>/pystitch-staging)
    def staging = values.staging_dir && !isUrl(values.staging_dir) ? file(values.staging_dir.toString()) : workflow.workDir.resolve('pystitch-staging')
    staging.mkdirs()

    images = channel.fromList(entries.findAll { entry -> entry[1] != null })
        .map { id, image, image_values ->
            // an image at a URL travels in meta.image_url; the task's path input is then a placeholder file
            def remote = isUrl(image) ? [ image_url: image.toString() ] : [:]
            [ [ id: id, args: allStepArguments(props, image_values) ] + (image_values.glob ? [ glob: image_values.glob ] : [:]) + remote,
              remote ? file("${projectDir}/assets/remote-image.txt") : image ]
        }
    if (values.input == 'example') {
        EXAMPLE_IMAGE(channel.of([ [ id: 'example', args: allStepArguments(props, values) ], values.example_shape ]))
        images = EXAMPLE_IMAGE.out.image
    }
    staging_dir     = channel.value(staging)
    blocks_per_task = channel.value(values.blocks_per_task)

    // (emit by name only: `emit: name = value` loses its value under the strict
    // parser of nf-lang 25.04.0, the version on Maven Central)
    emit:
    images          // channel: [ val(meta), path(image) ]
    staging_dir     // value channel: path of the run's staging directory
    blocks_per_task // value channel: integer
}

/*
 * The versions of every tool that ran (topic `versions`: [ process, tool, version ])
 * as <outdir>/pipeline_info/software_versions.yml.
 */
workflow PIPELINE_COMPLETION {

    take:
    outdir // value: the output folder

    main:
    channel.topic('versions')
        .unique()
        .map { process, tool, version -> [ process, "    ${tool}: ${version}".toString() ] }
        .groupTuple()
        .map { process, tools -> ("${process}:\n" + tools.sort().join('\n')).toString() }
        .mix(channel.of("Workflow:\n    pystitch: ${workflow.manifest.version}\n    Nextflow: ${nextflow.version.toString()}".toString()))
        .collectFile(name: 'software_versions.yml', storeDir: isUrl(outdir) ? 'pipeline_info' : "${outdir}/pipeline_info", sort: true, newLine: true)
}
