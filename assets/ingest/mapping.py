"""Source mappings: how a source's files and columns map to the canonical schema (docs/evaluation-protocol.md).

A mapping is a YAML file. `mappings/example_user.yaml` is a commented example; the built-in ones are
`mappings/completejourney.yaml` (the embedded Complete Journey data) and `mappings/canonical.yaml` (files
already in the canonical format, e.g. the synthetic market). Top-level keys:

    source: my_shop              # name stored in every row (default: the built-in name; for a file called
                                 # mapping.yaml its folder's name; otherwise the file's stem)
    extends: canonical           # optional: start from a built-in mapping and override its top-level keys
    base_dir: .                  # where the file globs are resolved: a folder relative to this file (default
                                 # its own folder), an absolute path, or {package: NAME, folder: SUBFOLDER}
    strict_columns: false        # true: a file with columns the mapping does not use is rejected;
                                 # false: they are named in a logged warning and ignored
    csv: {delimiter: ",", quote: '"', escape: '"'}   # CSV dialect (files always have a header line)
    transactions: {...}          # one section per table, each optional
    products: {...}
    customers: {...}

A table section:

    files: "sales_*.csv"         # glob(s) relative to base_dir; brace lists work: "tx*.{csv,parquet}"
    columns:                     # canonical column -> where it comes from
      basket_id: order_no        #   a source column (text)
      unit_price: {expr: "try_cast(amount as double) / try_cast(qty as double)"}  # a DuckDB SQL
                                 #   expression over source columns; `_row` is the 1-based row in the file
      channel: {const: retail}   #   a constant
      brand: {column: brand, optional: true}   # a column that may be absent: NULL (or `default:`) then
      ts: {column: sold_at, format: "%d/%m/%Y %H:%M"}  # ts only: a strptime format for text timestamps
    attributes: [colour, size]   # products/customers: extra fields kept as JSON object text:
                                 #   a list of source columns; "*" = every column not used otherwise;
                                 #   or {column|expr: JSON text, include: [...] or "*", optional: bool}
    ignore_columns: [store_id]   # source columns dropped on purpose (no warning, allowed in strict mode)
    exclude: {department: [FUEL]}   # products only: canonical column -> values marking non-merchandise
                                    # (products.is_merchandise = false, never part of an episode)
    exhaustive: false            # customers only: true = the customer file lists every customer
                                 # (transactions of others are quarantined as unknown_customer); false =
                                 # customers seen in transactions are registered with a NULL segment

Canonical columns (required ones marked *): transactions: txn_id*, basket_id*, ts*, customer_id*,
product_id*, quantity*, unit_price*, list_price (default: unit_price), channel (default 'retail');
products: product_id*, category* (may be {const: null}), brand, department, description; customers:
customer_id*, segment. CSV columns are read as text: expressions over them must cast (use try_cast, so a
bad value gives NULL and the row is quarantined instead of failing the file).

A bad mapping raises MappingError (a ValueError) with a one-line message naming the fix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from resources.paths import PROJECT_ROOT
from resources.warehouse import quote_ident

MAPPINGS_DIR = PROJECT_ROOT / "mappings"
TABLES = ("products", "customers", "transactions")  # load order: products and customers before transactions

# canonical column -> (required, default constant when not mapped)
CANONICAL: dict[str, dict[str, tuple[bool, Any]]] = {
    "transactions": {
        "txn_id": (True, None),
        "basket_id": (True, None),
        "ts": (True, None),
        "customer_id": (True, None),
        "product_id": (True, None),
        "quantity": (True, None),
        "unit_price": (True, None),
        # NULL -> unit_price (docs/evaluation-protocol.md: equal to unit_price where unknown)
        "list_price": (False, None),
        "channel": (False, "retail"),
    },
    "products": {
        "product_id": (True, None),
        "category": (True, None),
        "brand": (False, None),
        "department": (False, None),
        "description": (False, None),
    },
    "customers": {
        "customer_id": (True, None),
        "segment": (False, None),
    },
}
KEY_COLUMN = {"transactions": "txn_id", "products": "product_id", "customers": "customer_id"}
TARGET_TABLE = {"transactions": "raw_transactions", "products": "products", "customers": "customers"}
TOP_KEYS = {"source", "extends", "base_dir", "strict_columns", "csv", *TABLES}
TABLE_KEYS = {
    "transactions": {"files", "columns", "ignore_columns"},
    "products": {"files", "columns", "ignore_columns", "attributes", "exclude"},
    "customers": {"files", "columns", "ignore_columns", "attributes", "exhaustive"},
}
SPEC_KEYS = {"column", "expr", "const", "optional", "default", "format"}
CSV_KEYS = {"delimiter", "quote", "escape"}
ROW_COLUMN = "_row"  # the 1-based row number of a line in its file, usable in expressions
# parse-tree nodes an expression may not hold: each reads a table, a file or a URL
FORBIDDEN_NODES = {"SUBQUERY", "TABLE_FUNCTION", "BASE_TABLE", "JOIN", "SUBQUERY_NODE"}


class MappingError(ValueError):
    """A mapping that cannot be used; the message is one line and names the fix."""


@dataclass(frozen=True)
class ColumnSpec:
    """Where one canonical column comes from: a source column, an SQL expression, or a constant."""

    kind: str  # 'column' | 'expr' | 'const'
    value: Any  # column name, expression text, or the constant
    optional: bool = False  # column kind: the source may lack it (then `default`)
    default: Any = None  # constant used when an optional column is absent
    format: str | None = None  # ts only: strptime format

    def source_columns(self) -> set[str]:
        """The source columns this spec reads."""
        if self.kind == "column":
            return {self.value}
        if self.kind == "expr":
            return expression_columns(self.value) - {ROW_COLUMN}
        return set()


@dataclass(frozen=True)
class AttributesSpec:
    """Extra fields kept as JSON object text: a JSON column/expression and/or included source columns."""

    base: ColumnSpec | None = None  # a column or expression already holding JSON object text
    include: tuple[str, ...] | str = ()  # source columns packed into the object, or "*" = all unused

    def source_columns(self) -> set[str]:
        cols = self.base.source_columns() if self.base and not self.base.optional else set()
        return cols | (set(self.include) if isinstance(self.include, tuple) else set())


@dataclass(frozen=True)
class TableMapping:
    table: str
    files: tuple[str, ...]
    columns: dict[str, ColumnSpec]
    attributes: AttributesSpec | None = None
    ignore_columns: tuple[str, ...] = ()
    exclude: dict[str, tuple[str, ...]] = field(default_factory=dict)
    exhaustive: bool = False

    def required_source_columns(self) -> set[str]:
        """Source columns that must exist in a file of this table."""
        cols: set[str] = set()
        for spec in self.columns.values():
            if not spec.optional:
                cols |= spec.source_columns()
        if self.attributes:
            cols |= self.attributes.source_columns()
        return cols

    def used_source_columns(self) -> set[str]:
        """Every source column the mapping reads or ignores on purpose (optional ones included)."""
        cols = self.required_source_columns() | set(self.ignore_columns)
        for spec in self.columns.values():
            cols |= spec.source_columns()
        if self.attributes and self.attributes.base:
            cols |= self.attributes.base.source_columns()
        return cols


@dataclass(frozen=True)
class Mapping:
    name: str
    path: Path | None  # the YAML file (None for a mapping built in code)
    base_dir: Path
    tables: dict[str, TableMapping]
    strict_columns: bool = False
    csv: dict[str, str] = field(default_factory=lambda: {"delimiter": ",", "quote": '"', "escape": '"'})

    @property
    def label(self) -> str:
        return str(self.path) if self.path else self.name

    def expand_globs(self, table: str) -> list[Path]:
        """The files of one table, sorted, from its globs under base_dir."""
        tm = self.tables.get(table)
        if tm is None:
            return []
        found: set[Path] = set()
        for pattern in tm.files:
            for pat in expand_braces(pattern):
                p = Path(pat)
                if p.is_absolute():
                    found |= {q for q in Path(p.anchor).glob(str(p.relative_to(p.anchor))) if q.is_file()}
                else:
                    found |= {q for q in self.base_dir.glob(pat) if q.is_file()}
        return sorted(found)

    def tables_of(self, path: Path) -> list[str]:
        """Which tables a file holds (in load order; a one-file export may feed all three), by matching its
        name (or its path under base_dir) to the globs."""
        path = Path(path)
        try:
            rel = path.resolve().relative_to(self.base_dir.resolve())
        except ValueError:
            rel = None
        found = []
        for table in TABLES:
            tm = self.tables.get(table)
            if tm is None:
                continue
            for pat in (p for pattern in tm.files for p in expand_braces(pattern)):
                if rel is not None:  # under base_dir: the glob must match the relative path itself
                    hit = rel.match(pat) and len(rel.parts) == len(Path(pat).parts)
                else:
                    hit = path.match(Path(pat).name)
                if hit:
                    found.append(table)
                    break
        return found


def expand_braces(pattern: str) -> list[str]:
    """'tx*.{csv,parquet}' -> ['tx*.csv', 'tx*.parquet'] (one or more brace groups, not nested)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    out: list[str] = []
    for alt in m.group(1).split(","):
        out += expand_braces(pattern[: m.start()] + alt + pattern[m.end() :])
    return out


@cache
def _parser():
    import duckdb

    return duckdb.connect()


@cache
def expression_columns(expr: str) -> frozenset[str]:
    """The column names an SQL expression reads (parsed by DuckDB, not executed)."""
    conn = _parser()
    try:
        tree = json.loads(
            conn.execute("select json_serialize_sql($q)", {"q": f"select ({expr})"}).fetchall()[0][0]
        )
    except Exception as e:  # noqa: BLE001 - duckdb raises several types
        raise MappingError(f"cannot parse expression {expr!r}: {str(e).splitlines()[0]}") from e
    if tree.get("error"):
        raise MappingError(f"bad SQL expression {expr!r}: {tree.get('error_message', '').splitlines()[0]}")
    stmts = tree.get("statements", [])
    node = stmts[0]["node"] if len(stmts) == 1 else {}
    if (
        len(stmts) != 1
        or node.get("from_table", {}).get("type") != "EMPTY"
        or len(node.get("select_list", [])) != 1
    ):
        raise MappingError(
            f"expression {expr!r} must be one SQL expression over source columns (no ';' or FROM)"
        )
    cols: set[str] = set()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if x.get("class") == "SUBQUERY" or x.get("type") in FORBIDDEN_NODES:
                # a subquery or table function could read files or URLs (read_text('/etc/passwd')) into a row
                raise MappingError(
                    f"expression {expr!r} holds a subquery or table function; mapping expressions may only "
                    "compute over the row's source columns (no SELECT, read_text, read_csv, ...)"
                )
            if x.get("class") == "COLUMN_REF" and x.get("column_names"):
                cols.add(x["column_names"][-1])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(node["select_list"])
    return frozenset(cols)


def builtin_mapping_path(name: str) -> Path:
    """mappings/<name>.yaml of a built-in source (completejourney, canonical)."""
    path = MAPPINGS_DIR / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in MAPPINGS_DIR.glob("*.yaml") if p.stem != "example_user"))
        raise MappingError(
            f"unknown source {name!r}: use a built-in source ({known}) or a path to a mapping YAML"
        )
    return path


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise MappingError(f"mapping {path}: bad YAML{where} ({problem}); fix the syntax there") from e
    except OSError as e:
        raise MappingError(f"mapping {path}: cannot read it ({e.strerror})") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MappingError(
            f"mapping {path}: the top level must be a YAML mapping of keys ({', '.join(sorted(TOP_KEYS))})"
        )
    return data


def load_mapping(path_or_name: str | Path | Mapping) -> Mapping:
    """A Mapping from a built-in name (mappings/<name>.yaml) or a path to a mapping YAML, validated."""
    if isinstance(path_or_name, Mapping):
        return path_or_name
    text = str(path_or_name)
    p = Path(text).expanduser()
    is_path = p.suffix in {".yaml", ".yml"} or "/" in text or p.exists()
    if is_path:
        if not p.is_file():
            raise MappingError(
                f"mapping file {p} does not exist: pass a built-in source name or a mapping YAML path"
            )
        path, builtin = p.resolve(), None
    else:
        path, builtin = builtin_mapping_path(text), text
    data = _read_yaml(path)
    parent = data.get("extends")
    if parent is not None:
        if not isinstance(parent, str):
            raise MappingError(f"mapping {path}: extends must be the name of a built-in mapping")
        base = _read_yaml(builtin_mapping_path(parent))
        if "extends" in base:
            raise MappingError(
                f"mapping {path}: built-in {parent!r} extends another mapping (one level only)"
            )
        data = {**base, **{k: v for k, v in data.items() if k != "extends"}}
    if builtin is not None:
        default_name = builtin
    elif path.name in {"mapping.yaml", "mapping.yml"}:
        default_name = path.parent.name
    else:
        default_name = path.stem
    return parse_mapping(data, path=path, default_name=default_name)


def parse_mapping(data: dict, path: Path | None = None, default_name: str = "custom") -> Mapping:
    """Validate a mapping dict (as read from YAML) and build the Mapping."""
    where = f"mapping {path}" if path else "mapping"

    def fail(msg: str) -> MappingError:
        return MappingError(f"{where}: {msg}")

    unknown = set(data) - TOP_KEYS
    if unknown:
        raise fail(f"unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(TOP_KEYS))}")
    name = data.get("source") or default_name
    if not isinstance(name, str):
        raise fail("source must be a text name")
    strict = data.get("strict_columns", False)
    if not isinstance(strict, bool):
        raise fail("strict_columns must be true or false")
    csv = {"delimiter": ",", "quote": '"', "escape": '"'}
    csv_in = data.get("csv") or {}
    if not isinstance(csv_in, dict) or set(csv_in) - CSV_KEYS:
        raise fail(f"csv must be a mapping with keys among {', '.join(sorted(CSV_KEYS))}")
    for k, v in csv_in.items():
        if not isinstance(v, str) or len(v) != 1:
            raise fail(f"csv.{k} must be a single character")
        csv[k] = v
    base_dir = _base_dir(data.get("base_dir"), path, fail)
    tables = {t: _parse_table(t, data[t], fail) for t in TABLES if data.get(t) is not None}
    if not tables:
        raise fail("maps no table: add a transactions, products or customers section")
    return Mapping(name=name, path=path, base_dir=base_dir, tables=tables, strict_columns=strict, csv=csv)


def _base_dir(value: Any, path: Path | None, fail) -> Path:
    here = path.parent if path else Path.cwd()
    if value is None:
        return here
    if isinstance(value, str):
        p = Path(value).expanduser()
        return p if p.is_absolute() else (here / p).resolve()
    if isinstance(value, dict) and set(value) <= {"package", "folder"} and "package" in value:
        import importlib.resources

        try:
            root = importlib.resources.files(value["package"])
        except ModuleNotFoundError as e:
            raise fail(f"base_dir package {value['package']!r} is not installed: pip install it") from e
        return Path(str(root)) / value.get("folder", "")
    raise fail("base_dir must be a folder path or {package: NAME, folder: SUBFOLDER}")


def _parse_table(table: str, section: Any, fail) -> TableMapping:
    if not isinstance(section, dict):
        raise fail(f"{table} must be a mapping with keys {', '.join(sorted(TABLE_KEYS[table]))}")
    unknown = set(section) - TABLE_KEYS[table]
    if unknown:
        raise fail(
            f"unknown key(s) {', '.join(sorted(unknown))} in {table}; allowed: {', '.join(sorted(TABLE_KEYS[table]))}"
        )
    files = section.get("files")
    files = (files,) if isinstance(files, str) else tuple(files or ())
    if not files or not all(isinstance(f, str) and f for f in files):
        raise fail(f'{table}.files must name the file glob(s), e.g. files: "{table}*.csv"')
    cols_in = section.get("columns") or {}
    if not isinstance(cols_in, dict):
        raise fail(f"{table}.columns must map canonical columns to source columns")
    canon = CANONICAL[table]
    unknown = set(cols_in) - set(canon)
    if unknown:
        raise fail(
            f"unknown canonical column(s) {', '.join(sorted(unknown))} in {table}.columns; "
            f"allowed: {', '.join(canon)} (put other fields under attributes)"
        )
    missing = [c for c, (req, _) in canon.items() if req and c not in cols_in]
    if missing:
        raise fail(
            f"{table}.columns lacks required column(s) {', '.join(missing)}; "
            "map each to a source column, {expr: ...} or {const: ...}"
        )
    columns = {c: _parse_spec(f"{table}.columns.{c}", v, fail, is_ts=(c == "ts")) for c, v in cols_in.items()}
    for c, (_, default) in canon.items():
        columns.setdefault(c, ColumnSpec("const", default))
    attributes = _parse_attributes(table, section.get("attributes"), fail)
    ignore = section.get("ignore_columns") or []
    if not isinstance(ignore, list) or not all(isinstance(x, str) for x in ignore):
        raise fail(f"{table}.ignore_columns must be a list of source column names")
    exclude: dict[str, tuple[str, ...]] = {}
    for k, v in (section.get("exclude") or {}).items():
        if k not in {"category", "brand", "department", "product_id", "description"}:
            raise fail(
                f"products.exclude.{k}: exclude by category, brand, department, description or product_id"
            )
        vals = [v] if isinstance(v, str) else v
        if not isinstance(vals, list) or not all(isinstance(x, str | int) for x in vals):
            raise fail(f"products.exclude.{k} must be a list of values")
        exclude[k] = tuple(str(x) for x in vals)
    exhaustive = section.get("exhaustive", False)
    if not isinstance(exhaustive, bool):
        raise fail("customers.exhaustive must be true or false")
    return TableMapping(
        table=table,
        files=files,
        columns=columns,
        attributes=attributes,
        ignore_columns=tuple(ignore),
        exclude=exclude,
        exhaustive=exhaustive,
    )


def _parse_spec(where: str, v: Any, fail, is_ts: bool = False) -> ColumnSpec:
    if isinstance(v, str):
        return ColumnSpec("column", v)
    if not isinstance(v, dict):
        raise fail(f"{where} must be a source column name, {{column: ...}}, {{expr: ...}} or {{const: ...}}")
    unknown = set(v) - SPEC_KEYS
    if unknown:
        raise fail(
            f"unknown key(s) {', '.join(sorted(unknown))} in {where}; allowed: {', '.join(sorted(SPEC_KEYS))}"
        )
    kinds = [k for k in ("column", "expr", "const") if k in v]
    if len(kinds) != 1:
        raise fail(f"{where} needs exactly one of column, expr or const")
    kind = kinds[0]
    if v.get("format") is not None and not is_ts:
        raise fail(f"{where}: format is only for ts")
    if kind in {"column", "expr"} and (not isinstance(v[kind], str) or not v[kind].strip()):
        raise fail(f"{where}.{kind} must be non-empty text")
    if kind == "expr":
        try:
            expression_columns(v["expr"])  # validates the expression
        except MappingError as e:
            raise fail(f"{where}: {e}; write one DuckDB SQL expression over source columns") from e
    if v.get("optional") and kind != "column":
        raise fail(f"{where}: optional applies to a column, not to {kind}")
    if kind == "const" and v["const"] is not None and not isinstance(v["const"], str | int | float | bool):
        raise fail(f"{where}.const must be a scalar (text, number, true/false or null)")
    return ColumnSpec(kind, v[kind], bool(v.get("optional", False)), v.get("default"), v.get("format"))


def _parse_attributes(table: str, v: Any, fail) -> AttributesSpec | None:
    if v is None:
        return None
    if table == "transactions":
        raise fail("transactions has no attributes")
    if v == "*":
        return AttributesSpec(include="*")
    if isinstance(v, list):
        if not all(isinstance(x, str) for x in v):
            raise fail(f"{table}.attributes must list source column names")
        return AttributesSpec(include=tuple(v))
    if isinstance(v, dict):
        rest = {k: x for k, x in v.items() if k != "include"}
        base = _parse_spec(f"{table}.attributes", rest, fail) if rest else None
        if base is not None and base.kind == "const":
            raise fail(f"{table}.attributes: use column or expr for JSON text, not const")
        inc = v.get("include", ())
        if inc != "*" and not (isinstance(inc, list | tuple) and all(isinstance(x, str) for x in inc)):
            raise fail(f'{table}.attributes.include must be a list of source columns or "*"')
        return AttributesSpec(base=base, include=inc if inc == "*" else tuple(inc))
    raise fail(
        f'{table}.attributes must be a list of source columns, "*", or {{column|expr: ..., include: [...]}}'
    )


def quote_text(text: str) -> str:
    """A DuckDB string literal of a column name (used for JSON keys)."""
    return "'" + text.replace("'", "''") + "'"


def render_spec(spec: ColumnSpec, available: set[str], params: dict[str, Any], pname: str) -> str:
    """The SQL of one spec over the source's columns; constants become $params (never formatted in)."""
    if spec.kind == "column":
        if spec.value in available:
            return quote_ident(spec.value)
        params[pname] = spec.default
        return f"${pname}"
    if spec.kind == "expr":
        return f"({spec.value})"
    params[pname] = spec.value
    return f"${pname}"


def render_attributes(tm: TableMapping, available: list[str], params: dict[str, Any]) -> str:
    """SQL giving the JSON object text of a table's attributes (NULL when the mapping keeps none)."""
    a = tm.attributes
    if a is None:
        return "null"
    if a.include == "*":
        used = set()
        for spec in tm.columns.values():
            used |= spec.source_columns()
        if a.base:
            used |= a.base.source_columns()
        include = [c for c in available if c not in used and c not in tm.ignore_columns and c != ROW_COLUMN]
    else:
        include = list(a.include)
    obj = None
    if include:
        pairs = ", ".join(f"{quote_text(c)}, {quote_ident(c)}" for c in include)
        obj = f"json_object({pairs})"
    base = None
    if a.base is not None:
        base = render_spec(a.base, set(available), params, "attributes_base")
        base = f"cast({base} as varchar)"
    if base and obj:
        # a JSON text column merged with the included columns; invalid JSON stays invalid (bad_type later)
        return (
            f"case when {base} is null then cast({obj} as varchar) "
            f"when json_valid({base}) then cast(json_merge_patch({base}, {obj}) as varchar) else {base} end"
        )
    if base:
        return base
    return f"cast({obj} as varchar)" if obj else "null"
