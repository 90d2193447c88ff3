"""The GB BASIC parser: tokens to a syntax tree, by hand-written recursive descent.

One method per construct, so every error can say what it expected and where
(``line 12: NEXT without FOR``). A block (IF, FOR, DO, SELECT, FUNCTION, TABLE) is
parsed until its own closing words; any other closing word met first is reported as
the stray it is. Statements that call a built-in (``TALK``, ``SAVE``, ``SEND MAIL``...)
are read from one table of word sequences, so the grammar of those statements and the
built-ins registry stay side by side, and their argument counts are checked here,
before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable

from gbmedia.bots.errors import BasicSyntaxError
from gbmedia.bots.hear import FORMS
from gbmedia.bots.lib_web import KEYS
from gbmedia.bots.library import REGISTRY
from gbmedia.bots.syntax import (
    Assign,
    Binary,
    Call,
    CallStmt,
    DoLoop,
    Exit,
    Expr,
    ForEach,
    ForRange,
    Function,
    Hear,
    If,
    Index,
    Keyword,
    ListOf,
    Literal,
    Member,
    Name,
    Program,
    Return,
    SelectCase,
    SelectFrom,
    Stmt,
    Table,
    TableField,
    Text,
    Unary,
)
from gbmedia.bots.tokens import EOF, NAME, NEWLINE, NUMBER, OP, STRING, Piece, Token, tokenize

Loader = Callable[[str], str]  # an INCLUDEd dialog's name -> its source (KeyError: no such dialog)

HEAR_KINDS = {*FORMS, "TEXT", "LOGIN"}  # what HEAR ... AS takes: the forms it validates, any text, a sign-in

# Statements that call a built-in: words -> (built-in, words that separate arguments instead of commas).
# Longest first wins ("TALK TO" before "TALK").
STATEMENTS: dict[tuple[str, ...], tuple[str, tuple[str, ...]]] = {
    ("TALK", "TO"): ("talkTo", ()),
    ("TALK",): ("talk", ()),
    ("PRINT",): ("talk", ()),
    ("SEND", "SMS", "TO"): ("sendSms", ()),
    ("SEND", "MAIL", "TO"): ("sendMail", ()),
    ("SEND", "MAIL"): ("sendMail", ()),
    ("SEND", "FILE", "TO"): ("sendFileTo", ()),
    ("SEND", "FILE"): ("sendFile", ()),
    ("TRANSFER", "TO"): ("transferTo", ()),
    ("TRANSFER",): ("transferTo", ()),
    ("GO", "TO"): ("gotoDialog", ()),
    ("GOTO",): ("gotoDialog", ()),
    ("WAIT",): ("wait", ()),
    ("LOG",): ("log", ()),
    ("DEBUG",): ("debug", ()),
    ("ALLOW", "ROLE"): ("allowRole", ()),
    ("CREATE", "FOLDER"): ("createFolder", ()),
    ("COPY",): ("copyFile", ()),
    ("SHARE", "FOLDER"): ("shareFolder", ()),
    ("CONVERT",): ("convert", ()),
    ("CHART",): ("chart", ()),
    ("SHARPEN",): ("sharpen", ()),
    ("BLUR",): ("blur", ()),
    ("MERGE", "IMAGE"): ("mergeImage", ()),
    ("DELETE",): ("delete", ()),
    ("MERGE",): ("merge", ("WITH", "BY")),
    ("SET", "HEADER"): ("setHeader", ("AS", "=")),
    ("SET", "PARAM"): ("setParam", ("AS", "=")),
    ("CLICK", "LINK", "TEXT"): ("linkByText", ()),
    ("CLICK", "BUTTON"): ("clickButton", ()),
    ("CLICK",): ("click", ()),
    ("HOVER",): ("hover", ()),
    ("JOIN", "ROOM"): ("joinRoom", ("AS",)),
    ("SHOW", "CLOCK"): ("showClock", ()),
    ("SHOW", "SLIDE"): ("showSlide", ()),
    ("SHOW", "CHART"): ("showChart", ()),
    ("PROCESS", "VIDEO", "OF"): ("processVideo", ("WITH",)),
    ("PLAY", "TONE"): ("playTone", ()),
    ("SAY",): ("say", ()),
    ("LEAVE", "ROOM"): ("leaveRoom", ()),
}

# Forms that give a value, written without parentheses on the right of "=": x = FIND "t", "a=1".
VALUE_FORMS: dict[tuple[str, ...], tuple[str, tuple[str, ...]]] = {
    ("FIND",): ("find", ()),
    ("GET", "CONFIG"): ("getConfig", ()),
    ("GET",): ("getHttp", ()),
    ("POST",): ("postHttp", ()),
    ("PUT",): ("putHttp", ()),
    ("DIR",): ("dirFolder", ()),
    ("UPLOAD",): ("uploadFile", ()),
    ("FILL",): ("fill", ("WITH",)),
    ("SHARE", "FOLDER"): ("shareFolder", ()),
    ("MERGE", "IMAGE"): ("mergeImage", ()),
    ("USER", "OF"): ("userOf", ()),
    ("SORT",): ("sortBy", ("BY",)),
    ("MERGE",): ("merge", ("WITH", "BY")),
    ("DELETE",): ("delete", ()),
    ("TEXT", "OF"): ("getTextOf", ()),
    ("SCREENSHOT",): ("screenshot", ()),
    ("DOWNLOAD",): ("download", ()),
    ("JOIN", "ROOM"): ("joinRoom", ("AS",)),
    ("PROCESS", "VIDEO", "OF"): ("processVideo", ("WITH",)),
}

# SET <setting> [AS|=] value: the settings a dialog may change for the rest of its run.
SETTINGS = {
    ("LANGUAGE",),
    ("FILTER",),
    ("MAX", "LINES"),
    ("MAX", "COLUMNS"),
    ("OUTPUT",),
    ("PAGE", "MODE"),
    ("THEME",),
    ("WHOLE", "WORD"),
    ("TRANSLATOR",),
    ("HTTP", "USERNAME"),
    ("HTTP", "PASSWORD"),
}

# Closing words and the block each one closes, for "NEXT without FOR".
CLOSERS: dict[tuple[str, ...], str] = {
    ("NEXT",): "FOR",
    ("LOOP",): "DO",
    ("WEND",): "WHILE",
    ("ELSE",): "IF",
    ("ELSEIF",): "IF",
    ("END", "IF"): "IF",
    ("CASE",): "SELECT CASE",
    ("END", "SELECT"): "SELECT CASE",
    ("END", "FUNCTION"): "FUNCTION",
    ("END", "TABLE"): "TABLE",
}

_COMPARE = {"=", "<>", "<", ">", "<=", ">="}
MAX_DEPTH = 32  # nested blocks, and nested parts of one expression: deeper is refused, never a Python RecursionError
_EXPR_START_OPS = {"(", "[", "-", "+"}


def parse(source: str, dialog: str = "dialog", loader: Loader | None = None) -> Program:
    """Parse one dialog; ``loader`` supplies the source of the dialogs it INCLUDEs."""
    return _Parser(source, dialog, loader, (dialog,)).program()


class _Parser:
    def __init__(self, source: str, dialog: str, loader: Loader | None, chain: tuple[str, ...]) -> None:
        self.dialog = dialog
        self.loader = loader
        self.chain = chain
        self.tokens = tokenize(source, dialog=dialog)
        self.pos = 0
        self.depth = 0
        self.functions: dict[str, Function] = {}
        self.schedules: list[str] = []
        self.includes: list[str] = []
        self.tables: list[Table] = []

    # --- tokens ---------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.tokens[self.pos]
        if token.kind != EOF:
            self.pos += 1
        return token

    def error(self, message: str, token: Token | None = None, col: bool = True) -> BasicSyntaxError:
        token = token or self.peek()
        return BasicSyntaxError(message, token.line, token.col if col else None, self.dialog)

    def at_words(self, words: tuple[str, ...]) -> bool:
        return all(self.peek(i).is_word(w) for i, w in enumerate(words))

    def accept_word(self, *words: str) -> Token | None:
        if self.peek().is_word(*words):
            return self.advance()
        return None

    def expect_word(self, word: str, context: str = "") -> Token:
        token = self.peek()
        if not token.is_word(word):
            raise self.error(f"expected {word}{context}, found {describe(token)}")
        return self.advance()

    def accept_op(self, *ops: str) -> Token | None:
        if self.peek().is_op(*ops):
            return self.advance()
        return None

    def expect_op(self, op: str, context: str = "") -> Token:
        token = self.peek()
        if not token.is_op(op):
            raise self.error(f"expected {op!r}{context}, found {describe(token)}")
        return self.advance()

    def expect_name(self, what: str) -> Token:
        token = self.peek()
        if token.kind != NAME:
            raise self.error(f"expected {what}, found {describe(token)}")
        return self.advance()

    def at_statement_end(self) -> bool:
        token = self.peek()
        return token.kind in (NEWLINE, EOF) or token.is_op(":")

    def end_statement(self) -> None:
        token = self.peek()
        if token.kind == NEWLINE or token.is_op(":"):
            self.advance()
        elif token.kind != EOF:
            raise self.error(f"unexpected {describe(token)} after the statement")

    def skip_blank(self) -> None:
        while self.peek().kind == NEWLINE or self.peek().is_op(":"):
            self.advance()

    # --- program and blocks -----------------------------------------------------------

    def program(self) -> Program:
        body, closer = self.block(set(), top=True)
        assert closer is None
        return Program(self.dialog, body, self.functions, self.schedules, self.includes, self.tables)

    def closer_here(self) -> tuple[str, ...] | None:
        for words in sorted(CLOSERS, key=len, reverse=True):
            if self.at_words(words):
                return words
        return None

    def block(self, closers: set[tuple[str, ...]], top: bool = False) -> tuple[list[Stmt], tuple[str, ...] | None]:
        """Statements until one of ``closers`` (not consumed) or the end of the file (None)."""
        body: list[Stmt] = []
        self.deeper("blocks")
        try:
            return self._block(closers, top, body)
        finally:
            self.depth -= 1

    def deeper(self, what: str) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"{what} nested more than {MAX_DEPTH} deep")

    def _block(
        self, closers: set[tuple[str, ...]], top: bool, body: list[Stmt]
    ) -> tuple[list[Stmt], tuple[str, ...] | None]:
        while True:
            self.skip_blank()
            if self.peek().kind == EOF:
                return body, None
            words = self.closer_here()
            if words is not None:
                if words in closers:
                    return body, words
                raise self.error(f"{' '.join(words)} without {CLOSERS[words]}", col=False)
            for stmt in self.statement(top):
                stmt.dialog = stmt.dialog or self.dialog
                body.append(stmt)

    def closed_block(
        self, closers: set[tuple[str, ...]], opener: Token, name: str
    ) -> tuple[list[Stmt], tuple[str, ...]]:
        body, closer = self.block(closers)
        if closer is None:
            missing = " ".join(max(closers, key=len))  # the one that must come: END IF, NEXT, LOOP...
            raise BasicSyntaxError(f"{name} without {missing}", opener.line, None, self.dialog)
        return body, closer

    # --- statements -----------------------------------------------------------------

    def statement(self, top: bool = False) -> list[Stmt]:
        token = self.peek()
        if token.kind != NAME:
            raise self.error(f"expected a statement, found {describe(token)}")
        word = token.upper
        handler = {
            "IF": self.if_statement,
            "FOR": self.for_statement,
            "DO": self.do_statement,
            "WHILE": self.while_statement,
            "EXIT": self.exit_statement,
            "END": self.end_statement_word,
            "RETURN": self.return_statement,
            "CALL": self.call_statement,
            "HEAR": self.hear_statement,
            "INPUT": self.input_statement,
            "SET": self.set_statement,
            "SAVE": self.save_statement,
            "SORT": self.sort_statement,
            "APPEND": self.append_statement,
            "PRESS": self.press_statement,
            "OPEN": self.open_statement,
        }.get(word)
        if word == "SELECT" and self.peek(1).is_word("CASE"):
            return [self.select_statement()]
        if word in ("FUNCTION", "SUB", "TABLE", "INCLUDE"):
            if not top:
                raise self.error(f"{word} must be at the top of the dialog, not inside a block", col=False)
            return {
                "FUNCTION": self.function_statement,
                "SUB": self.function_statement,
                "TABLE": self.table_statement,
                "INCLUDE": self.include_statement,
            }[word]()
        if handler is not None and not self.peek(1).is_op("=", "[", "."):
            stmts = handler()
            return stmts if isinstance(stmts, list) else [stmts]
        keyword = self.match_form(STATEMENTS)
        if keyword is not None and (len(keyword) > 1 or not self.peek(1).is_op("=", "[", ".")):
            stmt = self.keyword_statement(keyword, STATEMENTS[keyword])
            self.end_statement()
            return [stmt]
        stmt = self.assignment_or_call()
        self.end_statement()
        return [stmt]

    def match_form(self, table: dict[tuple[str, ...], tuple[str, tuple[str, ...]]]) -> tuple[str, ...] | None:
        for words in sorted(table, key=len, reverse=True):
            if words == ("MERGE", "IMAGE") and self.peek(2).is_word("WITH"):
                continue  # MERGE image WITH rows BY key: a table named image, not MERGE IMAGE a, b
            if self.at_words(words):
                return words
        return None

    def arguments(self, separators: tuple[str, ...] = ()) -> list[Expr]:
        """Comma-separated expressions to the end of the statement; ``separators`` are words that also separate."""
        args: list[Expr] = []
        if self.at_statement_end():
            return args
        args.append(self.expression())
        while True:
            if self.accept_op(","):
                args.append(self.expression())
            elif separators and (self.peek().is_word(*separators) or ("=" in separators and self.peek().is_op("="))):
                self.advance()
                args.append(self.expression())
            else:
                return args

    def keyword_statement(self, words: tuple[str, ...], form: tuple[str, tuple[str, ...]]) -> Keyword:
        first = self.peek()
        self.pos += len(words)
        name, separators = form
        args = self.arguments(separators)
        self.check_arity(name, args, first, " ".join(words))
        return Keyword(first.line, name, args)

    def check_arity(self, name: str, args: list[Expr], token: Token, written: str) -> None:
        builtin = REGISTRY.get(name)
        if builtin is None:  # pragma: no cover - the statement tables only name registered built-ins
            raise self.error(f"unknown built-in {name}", token)
        if not builtin.accepts(len(args)):
            raise BasicSyntaxError(
                f"{written} takes {builtin.arity_text()}, got {len(args)}", token.line, token.col, self.dialog
            )

    def assignment_or_call(self) -> Stmt:
        first = self.peek()
        target = self.postfix()
        if self.accept_op("="):
            if not isinstance(target, Name | Index | Member):
                raise self.error("only a variable, an item list[i] or a field x.name can be assigned", first)
            return Assign(first.line, target, self.value())
        if isinstance(target, Call) and self.at_statement_end():
            return CallStmt(first.line, target.name, target.args)
        if isinstance(target, Name) and not self.at_statement_end():  # f a, b: a FUNCTION called without CALL
            if target.name.upper() in self.functions:
                return CallStmt(first.line, target.name, self.arguments())
        raise self.error(f"unknown statement {first.text.upper()}", first)

    def value(self) -> Expr:
        """The right of "=": a value form (``FIND ...``, ``GET url``, ``SELECT ...``) or an expression."""
        token = self.peek()
        if token.is_word("SELECT") and not self.peek(1).is_op("("):
            return self.select_from()
        if token.is_word("OPEN") and self.starts_expression(self.peek(1)):  # page = OPEN url [AS #session]
            self.advance()
            return Call(token.line, token.col, "openPage", self.open_arguments())
        words = self.match_form(VALUE_FORMS)
        if words is not None and self.starts_expression(self.peek(len(words))):
            name, separators = VALUE_FORMS[words]
            self.pos += len(words)
            args = self.arguments(separators)
            self.check_arity(name, args, token, " ".join(words))
            return Call(token.line, token.col, name, args)
        if token.kind == NAME and (self.peek(1).kind in (NEWLINE, EOF) or self.peek(1).is_op(":")):
            builtin = REGISTRY.get(token.upper)  # x = SCREENSHOT: a bare built-in that waits (a lookup cannot)
            if builtin is not None and builtin.bare and builtin.is_async and builtin.min_args == 0:
                self.advance()
                return Call(token.line, token.col, builtin.name, [])
        if token.kind == NAME and not self.peek(1).is_op("(") and self.starts_expression(self.peek(1)):
            builtin = REGISTRY.get(token.upper)
            if builtin is not None and builtin.bare:  # x = FORMAT v, "dd/MM/yyyy"
                self.advance()
                args = self.arguments()
                self.check_arity(builtin.name, args, token, token.upper)
                return Call(token.line, token.col, builtin.name, args)
        value = self.expression()
        if self.peek().is_word("AS") and self.peek(1).is_word("PDF", "IMAGE"):  # x = data AS PDF
            self.advance()
            return Call(token.line, token.col, "asPDF" if self.advance().upper == "PDF" else "asImage", [value])
        return value

    def select_from(self) -> Expr:
        token = self.advance()
        fields: list[str] = []
        if not self.accept_op("*"):
            fields.append(self.expect_name("a field name after SELECT").text)
            while self.accept_op(","):
                fields.append(self.expect_name("a field name").text)
        self.expect_word("FROM", " after the SELECT fields")
        source = self.expression()
        where = self.expression() if self.accept_word("WHERE") else None
        order, descending = None, False
        if self.accept_word("ORDER"):
            self.expect_word("BY", " after ORDER")
            order = self.expect_name("a field name after ORDER BY").text
            descending = bool(self.accept_word("DESC"))
            if not descending:
                self.accept_word("ASC")
        return SelectFrom(token.line, token.col, fields, source, where, order, descending)

    @staticmethod
    def starts_expression(token: Token) -> bool:
        return token.kind in (NAME, NUMBER, STRING) or (token.kind == OP and token.text in _EXPR_START_OPS)

    def if_statement(self) -> Stmt:
        opener = self.advance()
        cond = self.expression()
        self.expect_word("THEN", " after the IF condition")
        if not self.at_statement_end():  # IF c THEN stmt [ELSE stmt] on one line
            then = self.simple_statement()
            otherwise: list[Stmt] = []
            if self.accept_word("ELSE"):
                otherwise = self.simple_statement()
            self.end_statement()
            return If(opener.line, [(cond, then)], otherwise)
        branches: list[tuple[Expr, list[Stmt]]] = []
        closers = {("ELSE",), ("ELSEIF",), ("END", "IF")}
        while True:
            body, closer = self.closed_block(closers, opener, "IF")
            branches.append((cond, body))
            if closer == ("ELSEIF",) or (closer == ("ELSE",) and self.peek(1).is_word("IF")):
                self.pos += 1 if closer == ("ELSEIF",) else 2
                cond = self.expression()
                self.expect_word("THEN", " after the ELSEIF condition")
                self.end_statement()
                continue
            otherwise = []
            if closer == ("ELSE",):
                self.advance()
                self.end_statement()
                otherwise, _ = self.closed_block({("END", "IF")}, opener, "IF")
            self.pos += 2
            self.end_statement()
            return If(opener.line, branches, otherwise)

    def simple_statement(self) -> list[Stmt]:
        """The statement of a one-line IF: anything but a block."""
        token = self.peek()
        if token.is_word("IF", "FOR", "DO", "WHILE", "FUNCTION", "TABLE", "INCLUDE") or (
            token.is_word("SELECT") and self.peek(1).is_word("CASE")
        ):
            raise self.error(f"{token.upper} cannot follow THEN on the same line; start a block on the next line")
        if token.is_word("EXIT", "RETURN", "END"):
            stmt = {"EXIT": self.exit_statement, "RETURN": self.return_statement, "END": self.end_statement_word}[
                token.upper
            ](end=False)
            return [stmt]
        keyword = self.match_form(STATEMENTS)
        if keyword is not None:
            return [self.keyword_statement(keyword, STATEMENTS[keyword])]
        if token.is_word("HEAR", "CALL"):
            return [self.hear_statement(end=False) if token.upper == "HEAR" else self.call_statement(end=False)]
        first = self.peek()
        target = self.postfix()
        if self.accept_op("="):
            return [Assign(first.line, target, self.value())]
        if isinstance(target, Call):
            return [CallStmt(first.line, target.name, target.args)]
        raise self.error(f"unknown statement {first.text.upper()}", first)

    def select_statement(self) -> Stmt:
        opener = self.advance()
        self.advance()  # CASE
        subject = self.expression()
        self.end_statement()
        self.skip_blank()
        cases: list[tuple[list[Expr], list[Stmt]]] = []
        otherwise: list[Stmt] = []
        closers = {("CASE",), ("END", "SELECT")}
        if not (self.peek().is_word("CASE") or self.at_words(("END", "SELECT"))):
            raise self.error("expected CASE after SELECT CASE", col=False)
        while True:
            if self.at_words(("END", "SELECT")):
                self.pos += 2
                self.end_statement()
                return SelectCase(opener.line, subject, cases, otherwise)
            if self.peek().kind == EOF:
                raise BasicSyntaxError("SELECT CASE without END SELECT", opener.line, None, self.dialog)
            self.advance()  # CASE
            if self.accept_word("ELSE"):
                self.end_statement()
                otherwise, _ = self.closed_block({("END", "SELECT")}, opener, "SELECT CASE")
                continue
            values = [self.expression()]
            while self.accept_op(","):
                values.append(self.expression())
            self.end_statement()
            body, _ = self.closed_block(closers, opener, "SELECT CASE")
            cases.append((values, body))

    def for_statement(self) -> Stmt:
        opener = self.advance()
        if self.accept_word("EACH"):
            var = self.expect_name("the loop variable after FOR EACH").upper
            self.expect_word("IN", " after FOR EACH variable")
            iterable = self.expression()
            self.end_statement()
            body = self.next_block(opener, var)
            return ForEach(opener.line, var, iterable, body)
        var = self.expect_name("the loop variable after FOR").upper
        self.expect_op("=", " after the FOR variable")
        start = self.expression()
        self.expect_word("TO", " in FOR")
        end = self.expression()
        step = self.expression() if self.accept_word("STEP") else None
        self.end_statement()
        body = self.next_block(opener, var)
        return ForRange(opener.line, var, start, end, step, body)

    def next_block(self, opener: Token, var: str) -> list[Stmt]:
        body, _ = self.closed_block({("NEXT",)}, opener, "FOR")
        nxt = self.advance()
        if self.peek().kind == NAME and self.peek().upper != var:
            raise self.error(f"NEXT {self.peek().text} does not match FOR {var}", nxt, col=False)
        self.accept_word(var)
        self.end_statement()
        return body

    def do_statement(self) -> Stmt:
        opener = self.advance()
        cond, until = None, False
        if self.peek().is_word("WHILE", "UNTIL"):
            until = self.advance().upper == "UNTIL"
            cond = self.expression()
        self.end_statement()
        body, _ = self.closed_block({("LOOP",)}, opener, "DO")
        self.advance()
        at_end = False
        if self.peek().is_word("WHILE", "UNTIL"):
            if cond is not None:
                raise self.error("a DO loop has its condition after DO or after LOOP, not both")
            until = self.advance().upper == "UNTIL"
            cond = self.expression()
            at_end = True
        self.end_statement()
        return DoLoop(opener.line, cond, until, at_end, body)

    def while_statement(self) -> Stmt:
        opener = self.advance()
        cond = self.expression()
        self.end_statement()
        body, _ = self.closed_block({("WEND",)}, opener, "WHILE")
        self.advance()
        self.end_statement()
        return DoLoop(opener.line, cond, False, False, body)

    def exit_statement(self, end: bool = True) -> Stmt:
        token = self.advance()
        what = ""
        if self.peek().is_word("FOR", "DO", "FUNCTION", "SUB", "WHILE"):
            what = {"SUB": "FUNCTION", "WHILE": "DO"}.get(self.peek().upper, self.peek().upper)
            self.advance()
        if end:
            self.end_statement()
        return Exit(token.line, what)

    def end_statement_word(self, end: bool = True) -> Stmt:
        token = self.advance()
        if not self.at_statement_end():
            raise self.error(f"unexpected {describe(self.peek())} after END", col=True)
        if end:
            self.end_statement()
        return Exit(token.line, "")

    def return_statement(self, end: bool = True) -> Stmt:
        token = self.advance()
        value = None if self.at_statement_end() else self.expression()
        if end:
            self.end_statement()
        return Return(token.line, value)

    def call_statement(self, end: bool = True) -> Stmt:
        token = self.advance()
        name = self.expect_name("a FUNCTION name after CALL")
        if self.accept_op("("):
            args = [] if self.peek().is_op(")") else self.comma_list(")")
            self.expect_op(")", " to close the CALL arguments")
        else:
            args = self.arguments()
        if end:
            self.end_statement()
        return CallStmt(token.line, name.upper, args)

    def hear_statement(self, end: bool = True, token: Token | None = None) -> Stmt:
        """HEAR var [AS kind | AS "a", "b" | AS list]; ``token``: the INPUT that stands for it, already read."""
        token = token or self.advance()
        target = self.assignable("a variable after HEAR")
        stmt = Hear(token.line, target, "")
        if self.accept_word("AS"):
            kind = self.peek()
            if kind.kind == STRING:
                stmt.kind = "MENU"
                stmt.options = [self.expression()]
                while self.accept_op(","):
                    stmt.options.append(self.expression())
            elif kind.kind == NAME and kind.upper in HEAR_KINDS and self.peek(1).kind in (NEWLINE, EOF):
                stmt.kind = self.advance().upper
            else:
                stmt.kind = "LIST"
                stmt.options = [self.expression()]
        if end:
            self.end_statement()
        return stmt

    def input_statement(self) -> list[Stmt]:
        token = self.advance()
        stmts: list[Stmt] = []
        if self.peek().kind == STRING:
            stmts.append(Keyword(token.line, "talk", [self.primary()]))
            if not self.accept_op(",", ";"):
                raise self.error("expected ',' or ';' between the INPUT prompt and its variable")
        stmts.append(self.hear_statement(token=token))  # INPUT "q", x is TALK "q" then HEAR x
        return stmts

    def assignable(self, what: str) -> Expr:
        token = self.peek()
        if token.kind != NAME:
            raise self.error(f"expected {what}, found {describe(token)}")
        target = self.postfix()
        if not isinstance(target, Name | Index | Member):
            raise self.error(f"expected {what}", token)
        return target

    def set_statement(self) -> Stmt:
        token = self.advance()
        if self.accept_word("SCHEDULE"):
            cron = self.peek()
            if cron.kind != STRING or len(cron.parts) != 1:
                raise self.error('SET SCHEDULE takes a cron expression in quotes, like SET SCHEDULE "0 8 * * *"')
            self.advance()
            fields = cron.text.split()
            if not 5 <= len(fields) <= 6:
                raise self.error(f"SET SCHEDULE needs 5 or 6 cron fields, got {len(fields)}", cron)
            self.schedules.append(" ".join(fields))
            self.end_statement()
            return []  # type: ignore[return-value]  # a declaration: nothing runs
        for words in sorted(STATEMENTS, key=len, reverse=True):
            if words[0] == "SET" and self.at_words(words[1:]):
                self.pos -= 1
                stmt = self.keyword_statement(words, STATEMENTS[words])
                self.end_statement()
                return stmt
        for setting in sorted(SETTINGS, key=len, reverse=True):
            if self.at_words(setting):
                self.pos += len(setting)
                if setting == ("OUTPUT",) and self.accept_word("ARRAY"):
                    value: Expr = Literal(token.line, token.col, "ARRAY")
                else:
                    if not self.accept_word("AS"):
                        self.accept_op("=")
                    value = self.expression()
                self.end_statement()
                return Keyword(token.line, "set", [Literal(token.line, token.col, " ".join(setting)), value])
        if self.peek().kind == STRING or self.peek(1).is_op(","):  # SET "selector", "text": type into a field
            self.pos -= 1
            stmt = self.keyword_statement(("SET",), ("setElementText", ()))
            self.end_statement()
            return stmt
        raise self.error(f"unknown setting SET {self.peek().text.upper()}")

    def open_arguments(self) -> list[Expr]:
        """OPEN url [AS "session" | AS #session]: the arguments of openPage (the OPEN word already read)."""
        args = [self.expression()]
        if self.accept_word("AS"):
            if self.accept_op("#"):
                name = self.expect_name("a session name after AS #")
                args.append(Literal(name.line, name.col, name.text))
            else:
                args.append(self.expression())
        return args

    def open_statement(self) -> Stmt:
        token = self.advance()
        args = self.open_arguments()
        self.end_statement()
        return Keyword(token.line, "openPage", args)

    def press_statement(self) -> Stmt:
        """PRESS ENTER (a key's name, or its text: PRESS "Tab") [ON target | , target]."""
        token = self.advance()
        key = self.peek()
        if key.kind == NAME and key.upper in KEYS:
            self.advance()
            args: list[Expr] = [Literal(key.line, key.col, key.upper)]
        else:
            args = [self.expression()]
        if self.accept_word("ON") or self.accept_op(","):
            args.append(self.expression())
        self.end_statement()
        return Keyword(token.line, "pressKey", args)

    def save_statement(self) -> Stmt:
        token = self.advance()
        first = self.expression()
        if self.accept_word("AS"):  # SAVE data AS "file"
            args = [first, self.expression()]
            self.end_statement()
            return Keyword(token.line, "saveFile", args)
        args = [first]
        while self.accept_op(","):
            args.append(self.expression())
        self.end_statement()
        if len(args) < 2:
            raise BasicSyntaxError(
                'SAVE takes a table and its values (SAVE "table", a, b) or data AS "file"',
                token.line,
                token.col,
                self.dialog,
            )
        return Keyword(token.line, "save", args)

    def sort_statement(self) -> Stmt:  # SORT list BY member: sorts the variable in place
        token = self.advance()
        target = self.assignable("a list variable after SORT")
        self.expect_word("BY", " in SORT")
        member = self.expression()
        self.end_statement()
        return Keyword(token.line, "sortBy", [target, member], target)

    def append_statement(self) -> Stmt:  # APPEND list, item: adds to the variable in place
        token = self.advance()
        target = self.assignable("a list variable after APPEND")
        args: list[Expr] = [target]
        while self.accept_op(","):
            args.append(self.expression())
        if len(args) < 2:
            raise BasicSyntaxError(
                "APPEND takes a list and what to add (APPEND list, item)", token.line, token.col, self.dialog
            )
        self.end_statement()
        return Keyword(token.line, "append", args, target)

    def function_statement(self) -> list[Stmt]:
        opener = self.advance()
        name = self.expect_name("a FUNCTION name").upper
        params: list[str] = []
        if self.accept_op("("):
            if not self.peek().is_op(")"):
                params.append(self.expect_name("a parameter name").upper)
                while self.accept_op(","):
                    params.append(self.expect_name("a parameter name").upper)
            self.expect_op(")", " to close the parameters")
        self.end_statement()
        if name in self.functions:
            raise BasicSyntaxError(f"FUNCTION {name} is defined twice", opener.line, None, self.dialog)
        if REGISTRY.get(name) is not None:
            raise BasicSyntaxError(f"FUNCTION {name} has the name of a built-in", opener.line, None, self.dialog)
        body, _ = self.closed_block({("END", "FUNCTION")}, opener, "FUNCTION")
        self.pos += 2
        self.end_statement()
        self.functions[name] = Function(name, params, body, opener.line, self.dialog)
        return []

    def table_statement(self) -> list[Stmt]:
        opener = self.advance()
        name = self.expect_name("a table name after TABLE").text
        self.end_statement()
        fields: list[TableField] = []
        while True:
            self.skip_blank()
            if self.at_words(("END", "TABLE")):
                self.pos += 2
                self.end_statement()
                break
            if self.peek().kind == EOF or self.closer_here() is not None:
                raise BasicSyntaxError("TABLE without END TABLE", opener.line, None, self.dialog)
            fields.append(self.table_field())
        if not fields:
            raise BasicSyntaxError(f"TABLE {name} has no fields", opener.line, None, self.dialog)
        table = Table(opener.line, name, fields)
        self.tables.append(table)
        return [table]

    def table_field(self) -> TableField:
        name = self.expect_name("a field name")
        field = TableField(name.text, "string")
        if self.accept_op("*"):
            field.required = True
        field.type = self.expect_name(f"the type of field {name.text}").text.lower()
        if self.accept_op("("):
            size = self.peek()
            if size.kind != NUMBER or not size.text.isdigit():
                raise self.error("expected a size in the field's parentheses")
            self.advance()
            field.size = int(size.text)
            self.expect_op(")")
        while not self.at_statement_end():
            if self.accept_op("*"):
                field.required = True
                continue
            flag = self.expect_name("a field option (key, unique, auto or *)")
            if flag.upper not in ("KEY", "UNIQUE", "AUTO", "REQUIRED"):
                raise self.error(f"unknown field option {flag.text}", flag)
            setattr(field, {"REQUIRED": "required"}.get(flag.upper, flag.upper.lower()), True)
        self.end_statement()
        return field

    def include_statement(self) -> list[Stmt]:
        token = self.advance()
        name_token = self.peek()
        if name_token.kind == STRING and len(name_token.parts) == 1:
            name = name_token.text
        elif name_token.kind == NAME:
            name = name_token.text
        else:
            raise self.error("INCLUDE takes a dialog name")
        self.advance()
        self.end_statement()
        if name.lower().endswith(".bas"):
            name = name[:-4]
        if name in self.chain:
            raise BasicSyntaxError(f"INCLUDE cycle: {' -> '.join((*self.chain, name))}", token.line, None, self.dialog)
        if self.loader is None:
            raise BasicSyntaxError(
                "INCLUDE is not available here (no dialogs to include from)", token.line, None, self.dialog
            )
        try:
            source = self.loader(name)
        except KeyError:
            raise BasicSyntaxError(f"INCLUDE {name}: no such dialog", token.line, None, self.dialog) from None
        child = _Parser(source, name, self.loader, (*self.chain, name))
        included = child.program()
        for fname, function in included.functions.items():
            if fname in self.functions:
                raise BasicSyntaxError(f"FUNCTION {fname} of {name} is already defined", token.line, None, self.dialog)
            self.functions[fname] = function
        self.schedules.extend(included.schedules)
        self.includes.extend([name, *included.includes])
        self.tables.extend(included.tables)
        return included.body

    # --- expressions ----------------------------------------------------------------

    def expression(self) -> Expr:
        self.deeper("expressions")
        try:
            return self.or_expr()
        finally:
            self.depth -= 1

    def or_expr(self) -> Expr:
        left = self.and_expr()
        while (token := self.accept_word("OR")) is not None:
            left = Binary(token.line, token.col, "OR", left, self.and_expr())
        return left

    def and_expr(self) -> Expr:
        left = self.not_expr()
        while (token := self.accept_word("AND")) is not None:
            left = Binary(token.line, token.col, "AND", left, self.not_expr())
        return left

    def not_expr(self) -> Expr:
        if (token := self.accept_word("NOT")) is not None:
            self.deeper("NOTs")
            try:
                return Unary(token.line, token.col, "NOT", self.not_expr())
            finally:
                self.depth -= 1
        return self.comparison()

    def comparison(self) -> Expr:
        left = self.concat()
        while self.peek().kind == OP and self.peek().text in _COMPARE:
            token = self.advance()
            left = Binary(token.line, token.col, token.text, left, self.concat())
        return left

    def concat(self) -> Expr:
        left = self.additive()
        while (token := self.accept_op("&")) is not None:
            left = Binary(token.line, token.col, "&", left, self.additive())
        return left

    def additive(self) -> Expr:
        left = self.multiplicative()
        while (token := self.accept_op("+", "-")) is not None:
            left = Binary(token.line, token.col, token.text, left, self.multiplicative())
        return left

    def multiplicative(self) -> Expr:
        left = self.unary()
        while True:
            token = self.accept_op("*", "/", "\\", "%") or self.accept_word("MOD")
            if token is None:
                return left
            op = "MOD" if token.upper in ("MOD", "%") else token.text
            left = Binary(token.line, token.col, op, left, self.unary())

    def unary(self) -> Expr:
        if (token := self.accept_op("-", "+")) is not None:
            self.deeper("signs")
            try:
                return Unary(token.line, token.col, token.text, self.unary())
            finally:
                self.depth -= 1
        return self.power()

    def power(self) -> Expr:
        base = self.postfix()
        if (token := self.accept_op("^")) is not None:
            return Binary(token.line, token.col, "^", base, self.unary())  # right-associative
        return base

    def postfix(self) -> Expr:
        expr = self.primary()
        while True:
            if (token := self.accept_op("[")) is not None:
                index = self.expression()
                self.expect_op("]", " to close the index")
                expr = Index(token.line, token.col, expr, index)
            elif (token := self.accept_op(".")) is not None:
                name = self.expect_name("a field name after '.'")
                expr = Member(token.line, token.col, expr, name.text)
            else:
                return expr

    def comma_list(self, closer: str) -> list[Expr]:
        items = [self.expression()]
        while self.accept_op(","):
            if self.peek().is_op(closer):
                break
            items.append(self.expression())
        return items

    def primary(self) -> Expr:
        token = self.peek()
        if token.kind == NUMBER:
            self.advance()
            number = float(token.text) if any(c in token.text for c in ".eE") else int(token.text)
            return Literal(token.line, token.col, number)
        if token.kind == STRING:
            self.advance()
            return self.string(token)
        if token.is_op("("):
            self.advance()
            inner = self.expression()
            self.expect_op(")", " to close the parenthesis")
            return inner
        if token.is_op("["):
            self.advance()
            items = [] if self.peek().is_op("]") else self.comma_list("]")
            self.expect_op("]", " to close the list")
            return ListOf(token.line, token.col, items)
        if token.kind == NAME:
            self.advance()
            word = token.upper
            if word in ("TRUE", "FALSE"):
                return Literal(token.line, token.col, word == "TRUE")
            if word in ("NULL", "NOTHING", "EMPTY"):
                return Literal(token.line, token.col, None)
            if word == "TEXT" and self.peek().is_word("OF") and self.starts_expression(self.peek(1)):
                self.advance()  # TEXT OF target, inside an expression too: TALK TEXT OF "#total"
                return Call(token.line, token.col, "getTextOf", [self.power()])
            if word == "NEW":
                kind = self.expect_name("OBJECT or ARRAY after NEW")
                if kind.upper == "OBJECT":
                    return Call(token.line, token.col, "newObject", [])
                if kind.upper == "ARRAY":
                    return ListOf(token.line, token.col, [])
                raise self.error(f"NEW makes an OBJECT or an ARRAY, not {kind.text}", kind)
            if (
                self.peek().is_op("(")
                and self.peek().line == token.line
                and self.peek().col == token.col + len(token.text)
            ):
                self.advance()
                args = [] if self.peek().is_op(")") else self.comma_list(")")
                self.expect_op(")", f" to close the arguments of {token.text}")
                return Call(token.line, token.col, word, args)
            return Name(token.line, token.col, word)
        if token.kind in (NEWLINE, EOF):
            raise self.error("expected an expression, found the end of the line")
        raise self.error(f"expected an expression, found {describe(token)}")

    def string(self, token: Token) -> Expr:
        if len(token.parts) == 1 and isinstance(token.parts[0], str):
            return Literal(token.line, token.col, token.parts[0])
        parts: list[str | Expr] = []
        for part in token.parts:
            parts.append(part if isinstance(part, str) else self.interpolation(part))
        return Text(token.line, token.col, parts)

    def interpolation(self, piece: Piece) -> Expr:
        if not piece.source.strip():
            raise BasicSyntaxError("empty ${} in string", piece.line, piece.col - 2, self.dialog)
        inner = _Parser.__new__(_Parser)
        inner.dialog, inner.loader, inner.chain = self.dialog, None, self.chain
        inner.functions, inner.schedules, inner.includes, inner.tables = {}, [], [], []
        inner.tokens = [
            t for t in tokenize(piece.source, piece.line, piece.col, self.dialog, fragment=True) if t.kind != NEWLINE
        ]
        inner.pos = 0
        inner.depth = self.depth
        expr = inner.expression()
        if inner.peek().kind != EOF:
            raise inner.error(f"unexpected {describe(inner.peek())} in ${{...}}")
        return expr


def describe(token: Token) -> str:
    if token.kind == EOF:
        return "the end of the dialog"
    if token.kind == NEWLINE:
        return "the end of the line"
    if token.kind == STRING:
        return "a string"
    if token.kind == NUMBER:
        return f"the number {token.text}"
    return f"'{token.text}'"
