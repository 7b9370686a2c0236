// `nextflow lint` of the pinned Nextflow, with the null checks of the next
// release: Nextflow 25.04.4's CmdLint stops with a NullPointerException on a
// file that has errors but no warnings (or the reverse), fixed in 25.04.5,
// which is not on Maven Central. Everything else is Nextflow's own code: the
// strict parser and its analysis (nf-lang: ScriptParser, ConfigParser) and the
// error report of `nextflow lint` (StandardErrorListener). No rules of ours.
//
//   java -cp '.tools/nextflow/lib/*' scripts/nextflow/NfLint.java [-o full|extended|concise] PATH...
//
// Exit status 0 without errors, 1 with errors (warnings are printed only).
import java.io.File;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import nextflow.config.control.ConfigParser;
import nextflow.script.control.Compiler;
import nextflow.script.control.ParanoidWarning;
import nextflow.script.control.ScriptParser;
import nextflow.script.parser.v2.ErrorSummary;
import nextflow.script.parser.v2.StandardErrorListener;
import nextflow.util.PathUtils;
import org.codehaus.groovy.control.SourceUnit;
import org.codehaus.groovy.control.messages.Message;
import org.codehaus.groovy.control.messages.SyntaxErrorMessage;
import org.codehaus.groovy.control.messages.WarningMessage;
import org.codehaus.groovy.syntax.SyntaxException;

public class NfLint {
    public static void main(String[] args) throws Exception {
        String mode = "full";
        List<File> files = new ArrayList<>();
        List<String> exclude = List.of(".git", ".nextflow", ".tools", "work");
        for (int i = 0; i < args.length; i++) {
            if (args[i].equals("-o")) { mode = args[++i]; continue; }
            PathUtils.visitFiles(Path.of(args[i]), p -> !PathUtils.isExcluded(p, exclude), p -> files.add(p.toFile()));
        }
        ScriptParser scripts = new ScriptParser();
        ConfigParser configs = new ConfigParser();
        StandardErrorListener listener = new StandardErrorListener(mode, false);
        ErrorSummary summary = new ErrorSummary();
        for (File file : files) {
            if (file.getName().endsWith(".nf")) scripts.parse(file);
            else if (file.getName().endsWith(".config")) configs.parse(file);
        }
        scripts.analyze();
        configs.analyze();
        report(scripts.compiler(), listener, summary);
        report(configs.compiler(), listener, summary);
        listener.afterAll(summary);
        System.exit(summary.getErrors() > 0 ? 1 : 0);
    }

    static void report(Compiler compiler, StandardErrorListener listener, ErrorSummary summary) {
        List<SourceUnit> sources = new ArrayList<>(compiler.getSources().values());
        sources.sort(Comparator.comparing(s -> s.getSource().getURI()));
        for (SourceUnit source : sources) {
            List<? extends Message> errors = source.getErrorCollector().getErrors();
            List<WarningMessage> warnings = source.getErrorCollector().getWarnings();
            errors = errors == null ? List.of() : errors;
            warnings = warnings == null ? List.of() : warnings;
            errors = errors.stream().filter(m -> m instanceof SyntaxErrorMessage)
                .sorted(Comparator.comparingInt((Message m) -> ((SyntaxErrorMessage) m).getCause().getStartLine())
                    .thenComparingInt(m -> ((SyntaxErrorMessage) m).getCause().getStartColumn()))
                .toList();
            warnings = warnings.stream().filter(w -> !(w instanceof ParanoidWarning)).toList();
            if (!errors.isEmpty() || !warnings.isEmpty()) {
                listener.beforeErrors();
                for (Message message : errors) {
                    SyntaxException cause = ((SyntaxErrorMessage) message).getCause();
                    listener.onError(cause, source.getName(), source);
                    summary.setErrors(summary.getErrors() + 1);
                }
                for (WarningMessage warning : warnings) listener.onWarning(warning, source.getName(), source);
                listener.afterErrors();
            }
            if (errors.isEmpty()) summary.setFilesWithoutErrors(summary.getFilesWithoutErrors() + 1);
            else summary.setFilesWithErrors(summary.getFilesWithErrors() + 1);
        }
    }
}
