"""The check every job runs before it writes: does this DataFrame fit its table?

`conform(df, spec)` returns the DataFrame with the table's columns in the table's order, or raises
`SchemaMismatch` naming every problem at once: a missing or unexpected column, a type that differs
(safe widenings such as int -> long are cast, anything else is refused), a null in a non-nullable
column, or a key that is not unique. Refusing here means nothing reaches the table.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    DataType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    StructType,
)

from r2ec_batch.schemas.tables import TableSpec

# Casts that cannot lose information or meaning; everything else must already match.
_SAFE_CASTS: set[tuple[type, type]] = {
    (IntegerType, LongType),
    (FloatType, DoubleType),
    (IntegerType, FloatType),
    (IntegerType, DoubleType),
    (DoubleType, FloatType),  # ratings/scores computed in double are stored as float
}


class SchemaMismatch(ValueError):
    """A DataFrame does not fit the table it is about to be written to."""


def _same_type(a: DataType, b: DataType) -> bool:
    """Types equal, ignoring nullability flags inside arrays/maps (Spark sets them loosely)."""
    if isinstance(a, ArrayType) and isinstance(b, ArrayType):
        return _same_type(a.elementType, b.elementType)
    if isinstance(a, MapType) and isinstance(b, MapType):
        return _same_type(a.keyType, b.keyType) and _same_type(a.valueType, b.valueType)
    if isinstance(a, StructType) and isinstance(b, StructType):
        return [f.name for f in a.fields] == [f.name for f in b.fields] and all(
            _same_type(x.dataType, y.dataType) for x, y in zip(a.fields, b.fields, strict=True)
        )
    return type(a) is type(b)


def _castable(src: DataType, dst: DataType) -> bool:
    if isinstance(src, ArrayType) and isinstance(dst, ArrayType):
        return _same_type(src.elementType, dst.elementType) or _castable(
            src.elementType, dst.elementType
        )
    return (type(src), type(dst)) in _SAFE_CASTS


def conform(df: DataFrame, spec: TableSpec, check_keys: bool = True) -> DataFrame:
    """Return `df` reordered/cast to `spec`'s schema, or raise SchemaMismatch listing all problems."""
    problems: list[str] = []
    actual = {f.name: f for f in df.schema.fields}
    wanted = {f.name: f for f in spec.schema.fields}
    for name in wanted.keys() - actual.keys():
        problems.append(f"missing column {name!r}")
    for name in actual.keys() - wanted.keys():
        problems.append(f"unexpected column {name!r}")
    columns = []
    for f in spec.schema.fields:
        if f.name not in actual:
            continue
        have = actual[f.name].dataType
        if _same_type(have, f.dataType):
            columns.append(F.col(f.name))
        elif _castable(have, f.dataType):
            columns.append(F.col(f.name).cast(f.dataType).alias(f.name))
        else:
            problems.append(
                f"column {f.name!r} is {have.simpleString()}, table wants {f.dataType.simpleString()}"
            )
    if problems:
        raise SchemaMismatch(f"{spec.name}: " + "; ".join(sorted(problems)))

    out = df.select(*columns)
    required = [f.name for f in spec.schema.fields if not f.nullable]
    aggs = [F.sum(F.col(c).isNull().cast("long")).alias(c) for c in required]
    if check_keys:
        aggs.append(F.count(F.lit(1)).alias("__rows"))
        aggs.append(F.count_distinct(*[F.col(k) for k in spec.key]).alias("__keys"))
    if aggs:
        row = out.agg(*aggs).first()
        for c in required:
            if row[c]:
                problems.append(f"{row[c]} null value(s) in non-nullable column {c!r}")
        if check_keys and row["__rows"] != row["__keys"]:
            problems.append(
                f"key {spec.key} is not unique: {row['__rows']} rows, {row['__keys']} distinct keys"
            )
    if problems:
        raise SchemaMismatch(f"{spec.name}: " + "; ".join(problems))
    # Spark cannot mark a computed column non-nullable; the checks above enforce it instead.
    return out
