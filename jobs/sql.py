"""Run Spark SQL against the tables by name (after jobs/register_tables.py), for analysts and
scripts: each statement's result is printed as a table.

    bin/r2ec-submit jobs/sql.py -e "SELECT * FROM r2ec.published_recommendations LIMIT 10"
    bin/r2ec-submit jobs/sql.py -f my_queries.sql --max-rows 50

Statements are separated by ';' at the end of a line; '--' starts a comment. The session uses
the same catalog as register_tables (`--metastore`, `--catalog`; current schema `--schema`, so
`recommendations` and `r2ec.recommendations` both work). Path forms (delta.`warehouse/items`)
work too.
"""

from __future__ import annotations

import re
import sys

from r2ec_batch import cli, storage
from r2ec_batch.session import build_spark, metastore_arguments, resolve_metastore


def statements(text: str) -> list[str]:
    """Split a script into statements: '--' comments dropped, ';' at a line's end separates."""
    # a '--' inside a quoted string is text, not a comment
    lines = [re.sub(r"('(?:[^'\\]|\\.)*')|--.*$", lambda m: m.group(1) or "", line).rstrip()
             for line in text.splitlines()]
    out, current = [], []
    for line in lines:
        current.append(line)
        if line.endswith(";"):
            out.append("\n".join(current).strip().rstrip(";").strip())
            current = []
    out.append("\n".join(current).strip())
    return [s for s in out if s]


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-e", dest="query", help="SQL text (one or more statements)")
    src.add_argument("-f", dest="file", help="a file of SQL statements ('-' = standard input)")
    p.add_argument("--max-rows", type=int, default=20, help="rows printed per result")
    metastore_arguments(p)
    a = p.parse_args(argv)
    cli.setup_logging(a.verbose)
    if a.query is not None:
        text = a.query
    elif a.file == "-":
        text = sys.stdin.read()
    else:
        with open(a.file, encoding="utf-8") as f:
            text = f.read()
    todo = statements(text)
    if not todo:
        raise cli.JobError("no SQL statement given")
    metastore = resolve_metastore(a.metastore, storage.resolve(a.warehouse))
    spark = build_spark("r2ec-sql", metastore=metastore, quiet=True)
    if a.catalog:
        spark.catalog.setCurrentCatalog(a.catalog)
    if spark.catalog.databaseExists(a.schema):
        spark.catalog.setCurrentDatabase(a.schema)
    for stmt in todo:
        print(f"> {stmt.splitlines()[0]}" + (" ..." if "\n" in stmt else ""), flush=True)
        df = spark.sql(stmt)
        if df.columns:
            df.show(a.max_rows, truncate=False)
    return 0


if __name__ == "__main__":
    cli.run(main)
