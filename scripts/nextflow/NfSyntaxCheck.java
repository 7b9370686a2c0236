// Syntax gate for Nextflow scripts (*.nf) and config files (*.config).
//
// Nextflow 24.10 reads both kinds of file with the Groovy 4 parser and only
// then applies its own AST transformations. Running the same parser up to the
// CONVERSION phase (source text -> parse tree -> AST) rejects the files that
// Nextflow rejects with a syntax error, and nothing else. Later phases are
// deliberately skipped: semantic analysis resolves names as Java classes and
// misreads Nextflow idioms such as `include { A as B }`.
//
// With --nextflow-dsl (Nextflow's own jars on the class path) scripts also go
// through the transformations that Nextflow's script parser registers for that
// phase (nextflow.ast.NextflowDSL, NextflowXform, OpXform). They reject
// malformed DSL2 constructs the plain grammar accepts, e.g. an unknown label in
// a process body ("Invalid process definition -- Unknown keyword `foo`"). If
// those classes cannot be loaded the check falls back to the plain grammar and
// says so on stderr. Config files always get the plain grammar.
//
// Not caught here (only a real run, `-preview` or `-stub-run` finds these):
// undefined processes/variables, misspelt directives, wrong channel arity,
// invalid config option names.
//
// The Groovy parser often reports a broken statement at the `{` of the block
// that contains it (e.g. `main.nf:12:10: Unexpected input: '{'` for a bad
// token on line 14). To point closer to the mistake, the checker re-parses the
// inside of that block on its own (everything else blanked, so line and column
// numbers stay valid) and adds a `note:` line with the innermost position the
// parser then reports, plus notes for braces that are never closed or never
// opened. Notes are hints; only `error:` lines decide the exit status.
//
// Usage (scripts/nf-lint.sh compiles and caches this class):
//   java -cp <groovy jar or Nextflow jars>:<classes dir> NfSyntaxCheck [--nextflow-dsl] FILE...
// Output on stdout, one line each: `path:line:column: error|warning|note: message`.
// Exit status: 0 every file passes, 1 at least one error, 2 bad usage or an
// unreadable file.

import java.io.IOException;
import java.lang.annotation.Annotation;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Deque;
import java.util.List;

import groovyjarjarantlr4.v4.runtime.CharStreams;
import groovyjarjarantlr4.v4.runtime.Token;
import org.apache.groovy.parser.antlr4.GroovyLangLexer;
import org.apache.groovy.parser.antlr4.GroovyLexer;
import org.apache.groovy.parser.antlr4.GroovySyntaxError;
import org.codehaus.groovy.control.CompilationUnit;
import org.codehaus.groovy.control.CompilerConfiguration;
import org.codehaus.groovy.control.MultipleCompilationErrorsException;
import org.codehaus.groovy.control.Phases;
import org.codehaus.groovy.control.customizers.ASTTransformationCustomizer;
import org.codehaus.groovy.control.messages.ExceptionMessage;
import org.codehaus.groovy.control.messages.Message;
import org.codehaus.groovy.control.messages.SimpleMessage;
import org.codehaus.groovy.control.messages.SyntaxErrorMessage;
import org.codehaus.groovy.syntax.SyntaxException;

public final class NfSyntaxCheck {

    // Plain classes rather than records: the checker must build with Java 11,
    // the oldest JDK that Nextflow 24.10 runs on.

    /** One diagnostic: 1-based line and column (0 when unknown) and text. */
    static final class Diag {
        final int line;
        final int col;
        final String message;
        /** A crash of the compiler or of a transformation, not a finding. */
        final boolean internal;

        Diag(int line, int col, String message) {
            this(line, col, message, false);
        }

        Diag(int line, int col, String message, boolean internal) {
            this.line = line;
            this.col = col;
            this.message = message;
            this.internal = internal;
        }

        int line() { return line; }
        int col() { return col; }
        String message() { return message; }

        String format(String file, String kind) {
            return file + ":" + line + ":" + col + ": " + kind + ": " + message;
        }
    }

    /** A significant token of the Groovy lexer, with its char offsets. */
    static final class Tok {
        final int type;
        final int line;
        final int col;
        final int start;
        final int stop;

        Tok(int type, int line, int col, int start, int stop) {
            this.type = type;
            this.line = line;
            this.col = col;
            this.start = start;
            this.stop = stop;
        }

        int type() { return type; }
        int line() { return line; }
        int col() { return col; }
        int start() { return start; }
        int stop() { return stop; }
    }

    private static final int MAX_REFINE_DEPTH = 32;
    private static final int MAX_MESSAGE = 160;

    private NfSyntaxCheck() {}

    /** Transformations Nextflow 24.10's script parser adds (nextflow.script.ScriptParser). */
    private static final String[] NEXTFLOW_SCRIPT_XFORMS = {
        "nextflow.ast.NextflowDSL", "nextflow.ast.NextflowXform", "nextflow.ast.OpXform",
    };

    public static void main(String[] args) {
        boolean wantDsl = false;
        List<String> files = new ArrayList<>();
        for (String a : args) {
            if (a.equals("--nextflow-dsl")) wantDsl = true;
            else files.add(a);
        }
        if (files.isEmpty()) {
            System.err.println("usage: NfSyntaxCheck [--nextflow-dsl] FILE...");
            System.exit(2);
        }
        CompilerConfiguration plain = newConfig();
        CompilerConfiguration scripts = wantDsl ? nextflowScriptConfig() : plain;

        int errors = 0;
        boolean unreadable = false;
        for (String arg : files) {
            String text;
            try {
                text = Files.readString(Path.of(arg), StandardCharsets.UTF_8);
            } catch (IOException | RuntimeException e) {
                System.out.println(arg + ":0:0: error: cannot read file (" + e.getClass().getSimpleName()
                        + ": " + e.getMessage() + ")");
                unreadable = true;
                continue;
            }
            boolean isScript = !arg.endsWith(".config");
            List<Diag> found = parse(arg, text, isScript ? scripts : plain);
            if (!found.isEmpty() && isScript && scripts != plain && found.stream().allMatch(d -> d.internal)) {
                // A transformation crashed on a file the grammar accepts: not
                // the file's fault. Say so, and judge by the grammar alone.
                for (Diag d : found) System.out.println(d.format(arg, "warning"));
                found = parse(arg, text, plain);
            }
            for (Diag d : found) {
                System.out.println(d.format(arg, "error"));
            }
            if (!found.isEmpty()) {
                // Re-parses of block bodies use the plain grammar: the blanked
                // text is no longer a meaningful Nextflow script.
                for (Diag d : hints(arg, text, found.get(0), plain)) {
                    System.out.println(d.format(arg, "note"));
                }
            }
            errors += found.size();
        }
        System.exit(unreadable ? 2 : (errors > 0 ? 1 : 0));
    }

    static CompilerConfiguration newConfig() {
        CompilerConfiguration config = new CompilerConfiguration();
        config.setSourceEncoding("UTF-8");
        config.setTolerance(100);   // collect all messages, not only the first
        return config;
    }

    /** Plain config plus Nextflow's script transformations, when they load. */
    static CompilerConfiguration nextflowScriptConfig() {
        CompilerConfiguration config = newConfig();
        try {
            for (String name : NEXTFLOW_SCRIPT_XFORMS) {
                Class<? extends Annotation> xform = Class.forName(name).asSubclass(Annotation.class);
                config.addCompilationCustomizers(new ASTTransformationCustomizer(xform));
            }
            config.setScriptBaseClass("nextflow.script.BaseScript");
            return config;
        } catch (ClassNotFoundException | ClassCastException | LinkageError e) {
            System.err.println("NfSyntaxCheck: Nextflow classes not available (" + e
                    + "); checking the Groovy grammar only");
            return newConfig();
        }
    }

    /** Runs the Groovy front end up to CONVERSION on one source text. */
    static List<Diag> parse(String name, String text, CompilerConfiguration config) {
        List<Diag> out = new ArrayList<>();
        CompilationUnit unit = new CompilationUnit(config);
        unit.addSource(name, text);
        try {
            unit.compile(Phases.CONVERSION);
        } catch (MultipleCompilationErrorsException e) {
            List<? extends Message> messages = e.getErrorCollector().getErrors();
            if (messages != null) {
                for (Message m : messages) {
                    out.add(toDiag(m));
                }
            }
        } catch (RuntimeException | LinkageError e) {
            // Any other failure of the front end is reported, never swallowed.
            out.add(new Diag(0, 0, oneLine(e.toString()), true));
        }
        return out;
    }

    static Diag toDiag(Message m) {
        if (m instanceof SyntaxErrorMessage) {
            SyntaxException se = ((SyntaxErrorMessage) m).getCause();
            return new Diag(se.getStartLine(), se.getStartColumn(), oneLine(se.getOriginalMessage()));
        }
        if (m instanceof ExceptionMessage) {
            return new Diag(0, 0, oneLine(String.valueOf(((ExceptionMessage) m).getCause())), true);
        }
        if (m instanceof SimpleMessage) {
            return new Diag(0, 0, oneLine(((SimpleMessage) m).getMessage()));
        }
        return new Diag(0, 0, oneLine(String.valueOf(m)));
    }

    // ---------------------------------------------------------------- hints

    /** Extra locations that help find the mistake behind {@code first}. */
    static List<Diag> hints(String name, String text, Diag first, CompilerConfiguration config) {
        List<Diag> notes = new ArrayList<>();
        List<Tok> toks = lex(text);
        if (toks == null) {
            return notes;   // the lexer itself failed: the error is already precise
        }

        // Match braces (GString `${ }` braces are LBRACE/RBRACE tokens too).
        int[] match = new int[toks.size()];
        Arrays.fill(match, -1);
        Deque<Integer> open = new ArrayDeque<>();
        Tok strayClose = null;
        for (int i = 0; i < toks.size(); i++) {
            int type = toks.get(i).type();
            if (type == GroovyLexer.LBRACE) {
                open.push(i);
            } else if (type == GroovyLexer.RBRACE) {
                if (open.isEmpty()) {
                    if (strayClose == null) strayClose = toks.get(i);
                } else {
                    int j = open.pop();
                    match[i] = j;
                    match[j] = i;
                }
            }
        }

        // Re-parse the inside of the reported block until the position stops moving.
        Diag cur = first;
        Diag deepest = null;
        for (int depth = 0; depth < MAX_REFINE_DEPTH; depth++) {
            int i = braceAt(toks, cur.line(), cur.col());
            if (i < 0 || match[i] < 0) break;
            String inner = blockBody(text, toks, i, match[i]);
            List<Diag> again = parse(name, inner, config);
            if (again.isEmpty()) break;
            Diag d = again.get(0);
            if (d.line() <= 0 || (d.line() == cur.line() && d.col() == cur.col())) break;
            Tok end = toks.get(match[i]);
            if (d.line() > end.line() || (d.line() == end.line() && d.col() >= end.col())) {
                // The body ran out in the middle of a statement: point at the
                // `}` that ends it (the statement before it is incomplete).
                deepest = new Diag(end.line(), end.col(),
                        "incomplete statement before the '}' closing the block opened at "
                        + cur.line() + ":" + cur.col());
                break;
            }
            deepest = new Diag(d.line(), d.col(), "inside the block opened at "
                    + cur.line() + ":" + cur.col() + ": " + d.message());
            cur = d;
        }
        if (deepest != null) {
            notes.add(deepest);
        }

        if (strayClose != null) {
            notes.add(new Diag(strayClose.line(), strayClose.col(), "'}' without a matching '{'"));
        }
        // Report unclosed braces outermost first (that is where Groovy points).
        List<Integer> unclosed = new ArrayList<>(open);
        Collections.reverse(unclosed);
        for (int k = 0; k < unclosed.size() && k < 3; k++) {
            Tok t = toks.get(unclosed.get(k));
            notes.add(new Diag(t.line(), t.col(), "'{' is never closed"));
        }
        return notes;
    }

    /** Tokens on the default channel, or null when the text cannot be lexed. */
    static List<Tok> lex(String text) {
        // Char offsets from the lexer count code points; keep the hints simple
        // and skip them for texts with characters outside the BMP.
        if (text.codePointCount(0, text.length()) != text.length()) return null;
        try {
            GroovyLangLexer lexer = new GroovyLangLexer(CharStreams.fromString(text));
            lexer.removeErrorListeners();
            List<Tok> out = new ArrayList<>();
            for (Token t = lexer.nextToken(); t.getType() != Token.EOF; t = lexer.nextToken()) {
                if (t.getChannel() != Token.DEFAULT_CHANNEL) continue;
                out.add(new Tok(t.getType(), t.getLine(), t.getCharPositionInLine() + 1,
                        t.getStartIndex(), t.getStopIndex()));
            }
            return out;
        } catch (RuntimeException | GroovySyntaxError e) {
            return null;   // e.g. an unterminated string; already reported precisely
        }
    }

    static int braceAt(List<Tok> toks, int line, int col) {
        for (int i = 0; i < toks.size(); i++) {
            Tok t = toks.get(i);
            if (t.type() == GroovyLexer.LBRACE && t.line() == line && t.col() == col) return i;
        }
        return -1;
    }

    /**
     * The text with everything outside the body of the block {@code open..close}
     * replaced by blanks (line breaks kept). A closure's parameter list
     * (`{ a, b -> ...`, on the line of the `{`) is blanked too, so that the body
     * parses as plain statements.
     */
    static String blockBody(String text, List<Tok> toks, int open, int close) {
        int from = toks.get(open).stop() + 1;
        int to = toks.get(close).start();
        int nesting = 0;
        for (int k = open + 1; k < close; k++) {
            int type = toks.get(k).type();
            if (type == GroovyLexer.NL && nesting == 0) break;
            if (type == GroovyLexer.LBRACE || type == GroovyLexer.LPAREN || type == GroovyLexer.LBRACK) nesting++;
            if (type == GroovyLexer.RBRACE || type == GroovyLexer.RPAREN || type == GroovyLexer.RBRACK) nesting--;
            if (type == GroovyLexer.ARROW && nesting == 0) {
                from = toks.get(k).stop() + 1;
                break;
            }
        }
        char[] c = text.toCharArray();
        for (int k = 0; k < c.length; k++) {
            if ((k < from || k >= to) && c[k] != '\n' && c[k] != '\r') c[k] = ' ';
        }
        return new String(c);
    }

    /** Single-line message; long quoted input (whole blocks) is shortened. */
    private static String oneLine(String s) {
        if (s == null) return "";
        String line = s.replaceAll("\\s*\\R\\s*", " ").trim();
        return line.length() <= MAX_MESSAGE ? line : line.substring(0, MAX_MESSAGE - 3) + "...";
    }
}
