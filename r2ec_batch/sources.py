"""Readers for the input formats, and the validation rules that split rows into accepted and
quarantined. Used by `jobs/ingest.py`; everything here is Spark, nothing is collected except
a file's header line.

Each reader returns two *candidate* DataFrames with the same columns for every source:

- interactions: file, line_no, raw, raw_hex, user_id, item_id, ts_raw, ts_unit, rating_raw, pre_reason
- items:        file, line_no, raw, raw_hex, item_id, title, attributes, pre_reason

Lines are read whole (`read_lines`): every byte but the line end stays in its line, and
`raw_hex` keeps the line's bytes exactly as they are in the file, which `quarantine` stores
with every row it lists.

`pre_reason` is set when a row already failed while being read (not UTF-8, wrong number of
fields, unparseable JSON). `validate_items` / `validate_interactions` apply the remaining rules
and give every refused row exactly one reason, so read = accepted + quarantined holds exactly.
Blank lines are not records and are not counted.

An item whose title or attributes hold bytes that are not UTF-8, or control characters (C0
but tab, DEL, C1: what a terminal or a prompt must not receive), is *repaired*, not refused:
those become U+FFFD in its text, the item is accepted (and so are the events that refer to it),
and the row is also listed in `quarantine` with action 'repaired' and its original bytes. A
repaired row counts as accepted. An id with bad bytes or control characters cannot be trusted
and is refused; an event whose item's catalogue row was refused says which row.

Reasons quote at most `SHOWN_CHARS` of a field, with control characters replaced, so that a
1 MB field or an escape sequence never reaches the table or the log whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, StringType, StructField, StructType

from r2ec_batch import storage
from r2ec_batch.cli import JobError

MAX_ID_CHARS = 128
MAX_TITLE_CHARS = 1000
MAX_ATTR_CHARS = 2000
MAX_LINE_CHARS = 1_000_000
MAX_DESCRIPTION_WORDS = 100  # the authors' DESCRIPTION_MAX_LEN
MAX_RATING = 10.0
SHOWN_CHARS = 60  # of a field quoted in a reason
# Control characters that text must not carry: C0 but tab, line feed and carriage return; DEL; C1.
CONTROL = "[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f]"
# Unix seconds; events before 1995 or after 2100 are taken for a unit or parsing error.
MIN_TS, MAX_TS = 788_918_400, 4_102_444_800

ML_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
]


@dataclass
class Candidates:
    interactions: DataFrame
    items: DataFrame
    files: dict[str, str]  # role ("interactions"/"items") -> path


def read_lines(spark: SparkSession, path: str, encoding: str = "UTF-8") -> DataFrame:
    """(file, line_no, raw, raw_hex) for every non-blank line, read whole with Spark's text
    source: every byte but the line end stays in its line (the CSV reader used before cut a
    line at its separator byte, \\x01, and lost the rest). `raw` is the line decoded with
    `encoding` (bytes that do not decode become U+FFFD, which the validators detect); `raw_hex`
    is the line's bytes as they are in the file. Fails with a one-line error when the file is
    missing or empty."""
    n_bytes = storage.size(path)
    if n_bytes is None:
        raise JobError(f"{path}: file not found")
    if n_bytes == 0:
        raise JobError(f"{path}: file is empty")
    # The text source keeps each line's bytes as they are (a string column holds bytes);
    # hex() of it is those bytes, and decode() turns them into text in the file's encoding.
    df = (spark.read.text(storage.resolve(path)).withColumn("raw_hex", F.hex("value"))
          .withColumn("_part", F.spark_partition_id())
          .withColumn("_mid", F.monotonically_increasing_id())
          .filter(F.col("raw_hex") != ""))  # blank lines are not records
    # Line numbers follow file order (the scan's partitions are the file's byte ranges, in
    # order). Each partition numbers its own lines and adds the count of the partitions
    # before it: no global window, which would push the whole file through one task.
    df = df.withColumn("_rank", F.row_number().over(Window.partitionBy("_part").orderBy("_mid")))
    counts = sorted((r["_part"], r["count"]) for r in df.groupBy("_part").count().collect())
    offsets, total = [], 0
    for part, n in counts:
        offsets.append((part, total))
        total += n
    offsets_df = spark.createDataFrame(offsets or [(0, 0)], "_part int, _offset long")
    df = df.join(F.broadcast(offsets_df), "_part").withColumn(
        "line_no", (F.col("_offset") + F.col("_rank")).cast("long"))
    if encoding.replace("-", "").upper() == "UTF8":
        raw = F.make_valid_utf8("value")  # bytes that are not UTF-8 become U+FFFD
    else:  # e.g. ISO-8859-1, which maps every byte to a character
        raw = F.decode(F.unhex("raw_hex"), encoding)
    return df.select(F.lit(storage.basename(path)).alias("file"), "line_no", raw.alias("raw"),
                     "raw_hex")


def shown(col: Column) -> Column:
    """A field as a reason may quote it: control characters replaced, at most SHOWN_CHARS."""
    clean = F.regexp_replace(col, CONTROL, "\ufffd")
    return F.when(F.length(clean) > SHOWN_CHARS,
                  F.concat(F.substring(clean, 1, SHOWN_CHARS), F.lit("..."))).otherwise(clean)


def _has_control(col: Column) -> Column:
    return F.coalesce(col.rlike(CONTROL), F.lit(False))


def _refuse_id(reason: Column | None, name: str, what: str) -> Column:
    """`reason` (a CASE WHEN chain, or None to start one) with the checks every id column gets,
    in order: missing, too long, control characters."""
    col = F.col(name)
    for bad, text in ((col.isNull() | (col == ""), f"missing {what}"),
                      (F.length(name) > MAX_ID_CHARS, f"{what} longer than {MAX_ID_CHARS} chars"),
                      (_has_control(col), f"{what} holds control characters")):
        reason = F.when(bad, F.lit(text)) if reason is None else reason.when(bad, F.lit(text))
    return reason


def _one_file(folder: str, pattern: str, default: str) -> str:
    """The one file of `folder` matching `pattern`; several are an error (a second file was
    ignored without a word before)."""
    found = storage.glob(folder, pattern)
    if len(found) > 1:
        names = ", ".join(storage.basename(f) for f in found[:5])
        raise JobError(f"{folder}: {len(found)} files match {pattern} ({names}); keep one per "
                       "folder, or ingest each folder on its own")
    return found[0] if found else storage.join(folder, default)


NOT_UTF8 = "text is not valid UTF-8"
REPAIRED = "repaired: bytes that are not UTF-8 replaced with U+FFFD"


def _non_utf8(raw: Column) -> Column:
    return raw.contains("\ufffd")


def _header(lines: DataFrame, path: str) -> list[str]:
    first = lines.filter(F.col("line_no") == 1).select("raw").first()
    if first is None:
        raise JobError(f"{path}: file is empty")
    return [h.split(":")[0].strip() for h in first["raw"].split("\t")]


def _require(path: str, header: list[str], wanted: list[list[str]]) -> list[int]:
    """Index of the first present name of each alternative list, or a one-line error."""
    idx, missing = [], []
    for names in wanted:
        hit = next((header.index(n) for n in names if n in header), None)
        (missing.append("|".join(names)) if hit is None else idx.append(hit))
    if missing:
        raise JobError(
            f"{path}: missing required column(s) {', '.join(missing)} (header has {', '.join(header)})"
        )
    return idx


def _delimited(lines: DataFrame, sep: str, n_fields: int, skip_header: bool) -> DataFrame:
    df = lines.filter(F.col("line_no") > 1) if skip_header else lines
    fields = F.split(F.col("raw"), sep, -1)
    reason = (
        F.when(_non_utf8(F.col("raw")), F.lit(NOT_UTF8))
        .when(F.length("raw") > MAX_LINE_CHARS, F.lit(f"line longer than {MAX_LINE_CHARS} chars"))
        .when(F.size(fields) != n_fields,
              F.format_string(f"expected {n_fields} fields separated by {sep!r}, got %d",
                              F.size(fields)))
    )
    return df.withColumn("_f", fields).withColumn("pre_reason", reason)


def _field(i: int) -> Column:
    return F.trim(F.get(F.col("_f"), i))


_INTER_COLS = ["file", "line_no", "raw", "raw_hex", "user_id", "item_id", "ts_raw", "ts_unit",
               "rating_raw", "pre_reason"]
_ITEM_COLS = ["file", "line_no", "raw", "raw_hex", "item_id", "title", "attributes", "pre_reason"]


def read_ml100k_atomic(spark: SparkSession, folder: str) -> Candidates:
    """RecBole atomic files: `<name>.inter` (user_id, item_id, rating, timestamp; tab-separated,
    typed header) and `<name>.item` (item_id, movie_title, release_year, class)."""
    inter_path = _one_file(folder, "*.inter", "ml-100k.inter")
    item_path = _one_file(folder, "*.item", "ml-100k.item")
    il = read_lines(spark, inter_path)
    ih = _header(il, inter_path)
    u, i, r, t = _require(inter_path, ih, [["user_id"], ["item_id"], ["rating"], ["timestamp"]])
    inter = _delimited(il, "\t", len(ih), skip_header=True).select(
        "file", "line_no", "raw", "raw_hex", _field(u).alias("user_id"),
        _field(i).alias("item_id"), _field(t).alias("ts_raw"), F.lit("s").alias("ts_unit"),
        _field(r).alias("rating_raw"), "pre_reason",
    )
    tl = read_lines(spark, item_path)
    th = _header(tl, item_path)
    (ii, ti) = _require(item_path, th, [["item_id"], ["movie_title", "title"]])
    rename = {"release_year": "year", "class": "genres"}
    extra = [(rename.get(h, h), k) for k, h in enumerate(th) if k not in (ii, ti)]
    attrs = F.map_from_entries(F.array(*[
        F.struct(F.lit(name).alias("k"), F.substring(_field(k), 1, MAX_ATTR_CHARS).alias("v"))
        for name, k in extra
    ])) if extra else F.create_map().cast("map<string,string>")
    # Titles carry the year, "Toy Story (1995)", as in GroupLens' own u.item: it tells remakes apart.
    title = _field(ti)
    if "release_year" in th:
        year = _field(th.index("release_year"))
        title = F.when(year.rlike(r"^\d{4}$") & (title != "")
                       & ~title.endswith(F.format_string("(%s)", year)),
                       F.format_string("%s (%s)", title, year)).otherwise(title)
    items = _delimited(tl, "\t", len(th), skip_header=True).select(
        "file", "line_no", "raw", "raw_hex", _field(ii).alias("item_id"), title.alias("title"),
        attrs.alias("attributes"), "pre_reason",
    )
    return Candidates(inter, items, {"interactions": inter_path, "items": item_path})


def read_movielens_raw(spark: SparkSession, folder: str, encoding: str = "ISO-8859-1") -> Candidates:
    """GroupLens raw files: `u.data` (user, item, rating, unix time; tab-separated, no header)
    and `u.item` (pipe-separated, latin-1: id|title|release date|video date|url|19 genre flags)."""
    data_path, item_path = storage.join(folder, "u.data"), storage.join(folder, "u.item")
    inter = _delimited(read_lines(spark, data_path), "\t", 4, skip_header=False).select(
        "file", "line_no", "raw", "raw_hex", _field(0).alias("user_id"), _field(1).alias("item_id"),
        _field(3).alias("ts_raw"), F.lit("s").alias("ts_unit"), _field(2).alias("rating_raw"),
        "pre_reason",
    )
    n = 5 + len(ML_GENRES)
    genres = F.concat_ws(" ", F.filter(
        F.array(*[F.when(_field(5 + g) == "1", F.lit(name)) for g, name in enumerate(ML_GENRES)]),
        lambda x: x.isNotNull(),
    ))
    # The title carries the year, "Toy Story (1995)": keep it whole, as MovieLens users know it.
    items = _delimited(read_lines(spark, item_path, encoding), "\\|", n, skip_header=False).select(
        "file", "line_no", "raw", "raw_hex", _field(0).alias("item_id"), _field(1).alias("title"),
        F.create_map(F.lit("release_date"), _field(2), F.lit("genres"), genres).alias("attributes"),
        "pre_reason",
    )
    return Candidates(inter, items, {"interactions": data_path, "items": item_path})


_REVIEW_SCHEMA = StructType([
    StructField(n, StringType()) for n in
    ("user_id", "asin", "parent_asin", "rating", "timestamp", "title", "_corrupt")
])
_META_SCHEMA = StructType([
    StructField("parent_asin", StringType()), StructField("title", StringType()),
    StructField("main_category", StringType()), StructField("store", StringType()),
    StructField("average_rating", StringType()), StructField("rating_number", StringType()),
    StructField("price", StringType()), StructField("description", ArrayType(StringType())),
    StructField("categories", ArrayType(StringType())), StructField("_corrupt", StringType()),
])


def _json(lines: DataFrame, schema: StructType, required: list[str], path: str) -> DataFrame:
    parsed = lines.withColumn(
        "j", F.from_json("raw", schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt"})
    )
    present = parsed.agg(*[F.count(F.col(f"j.{c}")).alias(c) for c in required]).first()
    missing = [c for c in required if not present[c]]
    if missing:
        raise JobError(f"{path}: missing required field(s) {', '.join(missing)} in every record")
    reason = (
        F.when(_non_utf8(F.col("raw")), F.lit(NOT_UTF8))
        .when(F.length("raw") > MAX_LINE_CHARS, F.lit(f"line longer than {MAX_LINE_CHARS} chars"))
        .when(F.col("j").isNull() | F.col("j._corrupt").isNotNull(), F.lit("unparseable JSON"))
    )
    return parsed.withColumn("pre_reason", reason)


def read_amazon2023(spark: SparkSession, reviews: str, meta: str, paper_filters: bool = True
                    ) -> Candidates:
    """Amazon Reviews 2023 (McAuley Lab): a reviews jsonl and a meta jsonl of one category.
    Items are keyed by `parent_asin`, as the paper does. With `paper_filters` the authors' item
    filters apply: a title with '<span id', over 20 words or of <=1 character, or a price that is
    not a number, sends the item to quarantine (the authors' `load_items`)."""
    r = _json(read_lines(spark, reviews), _REVIEW_SCHEMA, ["user_id", "parent_asin", "timestamp"],
              reviews)
    inter = r.select(
        "file", "line_no", "raw", "raw_hex", F.trim("j.user_id").alias("user_id"),
        F.trim("j.parent_asin").alias("item_id"), F.trim("j.timestamp").alias("ts_raw"),
        F.lit("ms").alias("ts_unit"), F.trim("j.rating").alias("rating_raw"), "pre_reason",
    )
    m = _json(read_lines(spark, meta), _META_SCHEMA, ["parent_asin", "title"], meta)
    words = F.filter(F.split(F.concat_ws(" ", F.coalesce("j.description", F.array())), r"\s+"),
                     lambda w: w != "")
    description = F.when(
        F.size(words) > MAX_DESCRIPTION_WORDS,
        F.concat(F.array_join(F.slice(words, 1, MAX_DESCRIPTION_WORDS), " "), F.lit("...")),
    ).otherwise(F.array_join(words, " "))
    attrs = F.map_filter(F.create_map(
        F.lit("average_rating"), F.col("j.average_rating"),
        F.lit("rating_number"), F.col("j.rating_number"),
        F.lit("price"), F.col("j.price"),
        F.lit("category"), F.col("j.main_category"),
        F.lit("store"), F.col("j.store"),
        F.lit("categories"), F.array_join(F.coalesce("j.categories", F.array()), " > "),
        F.lit("description"), F.substring(description, 1, MAX_ATTR_CHARS),
    ), lambda k, v: v.isNotNull() & (v != ""))
    title = F.trim("j.title")
    reason = F.col("pre_reason")
    if paper_filters:
        reason = (
            F.when(reason.isNotNull(), reason)
            .when(title.contains("<span id"), F.lit("paper filter: title contains '<span id'"))
            .when(F.size(F.split(title, r"\s+")) > 20, F.lit("paper filter: title over 20 words"))
            .when(F.length(title) <= 1, F.lit("paper filter: title of <=1 character"))
            .when(F.col("j.price").isNull() | F.col("j.price").try_cast("double").isNull(),
                  F.lit("paper filter: price is not numeric"))
        )
    items = m.select(
        "file", "line_no", "raw", "raw_hex", F.trim("j.parent_asin").alias("item_id"),
        title.alias("title"),
        attrs.alias("attributes"), reason.alias("pre_reason"),
    )
    return Candidates(inter, items, {"interactions": reviews, "items": meta})


def _split_checked(df: DataFrame, reason: Column, key: list[str], dup_reason) -> DataFrame:
    """Attach `reason`: the first failing rule, else a duplicate-of-line reason for the second
    and later valid rows of a key (the first valid row in file order is the one kept)."""
    df = df.withColumn("reason", reason)
    w = Window.partitionBy(*key).orderBy("file", "line_no")
    valid = (
        df.filter(F.col("reason").isNull())
        .withColumn("_dup_rank", F.row_number().over(w))
        .withColumn("_first_line", F.first("line_no").over(w))
    )
    valid = valid.withColumn("reason", F.when(F.col("_dup_rank") > 1, dup_reason(valid)))
    return valid.unionByName(df.filter(F.col("reason").isNotNull()), allowMissingColumns=True)


def _early(df: DataFrame, *extra: str) -> DataFrame:
    return df.filter(F.col("pre_reason").isNotNull()).select(
        "file", "line_no", "raw", "raw_hex", *extra, F.col("pre_reason").alias("reason"))


REPAIRED_CONTROL = "repaired: control characters replaced with U+FFFD"


def validate_items(items: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(accepted: item_id, title, attributes), (refused: file, line_no, raw, raw_hex, item_id,
    reason) and (repaired: file, line_no, raw, raw_hex, reason), the accepted rows whose text
    was repaired."""
    # Bad bytes only in the text: the row is repairable. Bad bytes in the id (or a row that
    # failed to parse) stay refused.
    repairable = ((F.col("pre_reason") == NOT_UTF8) & F.col("item_id").isNotNull()
                  & ~_non_utf8(F.col("item_id")))
    values = F.coalesce(F.map_values("attributes"), F.array())
    control = (_has_control(F.col("title")) | F.exists(values, _has_control))
    items = (items.withColumn("_repaired", F.when(repairable, F.lit(REPAIRED))
                              .when(F.col("pre_reason").isNull() & control, F.lit(REPAIRED_CONTROL)))
             .withColumn("pre_reason", F.when(repairable, F.lit(None).cast("string"))
                         .otherwise(F.col("pre_reason")))
             .withColumn("title", F.regexp_replace("title", CONTROL, "\ufffd"))
             .withColumn("attributes", F.transform_values(
                 "attributes", lambda _k, v: F.regexp_replace(v, CONTROL, "\ufffd"))))
    reason = (
        _refuse_id(None, "item_id", "item id")
        .when(F.col("title").isNull() | (F.col("title") == ""), F.lit("missing title"))
        .when(F.length("title") > MAX_TITLE_CHARS, F.lit(f"title longer than {MAX_TITLE_CHARS} chars"))
    )
    checked = _split_checked(
        items.filter(F.col("pre_reason").isNull()), reason, ["item_id"],
        lambda v: F.format_string("duplicate item id (first seen on line %d)", v["_first_line"]),
    )
    ok = checked.filter(F.col("reason").isNull())
    accepted = ok.select("item_id", "title", "attributes")
    repaired = ok.filter(F.col("_repaired").isNotNull()).select(
        "file", "line_no", "raw", "raw_hex", F.col("_repaired").alias("reason"))
    refused = checked.filter(F.col("reason").isNotNull()).select(
        "file", "line_no", "raw", "raw_hex", "item_id", "reason")
    return accepted, refused.unionByName(_early(items, "item_id")), repaired


def validate_interactions(inter: DataFrame, known_items: DataFrame,
                          refused_items: DataFrame | None = None) -> tuple[DataFrame, DataFrame]:
    """(accepted: user_id, item_id, ts, rating, source_file, source_line) and (refused: file,
    line_no, raw, raw_hex, reason). The source file and line travel with each accepted event:
    they are its order among events of the same second.
    `known_items` has one column, item_id: the catalogue the events may refer to;
    `refused_items` (item_id, file, line_no) the catalogue rows this ingest refused, so that
    their events say why their item is unknown."""
    seconds = F.col("ts_raw").try_cast("double") / F.when(F.col("ts_unit") == "ms", 1000.0).otherwise(1.0)
    df = (
        inter.filter(F.col("pre_reason").isNull())
        .withColumn("_sec", seconds).withColumn("_rating", F.col("rating_raw").try_cast("double"))
        .join(known_items.select("item_id", F.lit(True).alias("_known")), "item_id", "left")
    )
    if refused_items is not None:
        first = Window.partitionBy("item_id").orderBy("file", "line_no")
        refused_rows = (refused_items.filter(F.col("item_id").isNotNull())
                        .withColumn("_n", F.row_number().over(first)).filter("_n = 1")
                        .select("item_id", F.col("file").alias("_item_file"),
                                F.col("line_no").alias("_item_line")))
        df = df.join(refused_rows, "item_id", "left")
    else:
        df = df.withColumn("_item_file", F.lit(None).cast("string")).withColumn(
            "_item_line", F.lit(None).cast("long"))
    reason = (
        # not _refuse_id for the item: an event of an item whose catalogue row was refused
        # (control characters in its id, say) names that row before the id's own fault
        _refuse_id(None, "user_id", "user id")
        .when(F.col("item_id").isNull() | (F.col("item_id") == ""), F.lit("missing item id"))
        .when(F.length("item_id") > MAX_ID_CHARS, F.lit(f"item id longer than {MAX_ID_CHARS} chars"))
        .when(F.col("_known").isNull() & F.col("_item_line").isNotNull(),
              F.format_string("item %s: its catalogue row (%s line %d) was refused",
                              shown(F.col("item_id")), F.col("_item_file"), F.col("_item_line")))
        .when(_has_control(F.col("item_id")), F.lit("item id holds control characters"))
        .when(F.col("_sec").isNull() | F.isnan("_sec"),
              F.format_string("unparseable timestamp '%s'", shown(F.col("ts_raw"))))
        .when((F.col("_sec") < MIN_TS) | (F.col("_sec") > MAX_TS),
              F.format_string("timestamp out of range '%s'", shown(F.col("ts_raw"))))
        .when(F.col("_rating").isNull() | F.isnan("_rating"),
              F.format_string("unparseable rating '%s'", shown(F.col("rating_raw"))))
        .when((F.col("_rating") < 0) | (F.col("_rating") > MAX_RATING),
              F.format_string("rating out of range '%s'", shown(F.col("rating_raw"))))
        .when(F.col("_known").isNull(),
              F.format_string("unknown item id '%s'", shown(F.col("item_id"))))
    )

    def dup_reason(v: DataFrame) -> Column:
        w = Window.partitionBy("user_id", "item_id", "_sec").orderBy("file", "line_no")
        same = v["_rating"] == F.first("_rating").over(w)
        return F.when(same, F.format_string("exact duplicate of line %d", v["_first_line"])).otherwise(
            F.format_string("same user, item and time as line %d with another rating",
                            v["_first_line"]))

    checked = _split_checked(df, reason, ["user_id", "item_id", "_sec"], dup_reason)
    accepted = checked.filter(F.col("reason").isNull()).select(
        "user_id", "item_id", F.timestamp_seconds("_sec").alias("ts"),
        F.col("_rating").cast("float").alias("rating"),
        F.col("file").alias("source_file"), F.col("line_no").alias("source_line"))
    refused = checked.filter(F.col("reason").isNotNull()).select(
        "file", "line_no", "raw", "raw_hex", "reason")
    return accepted, refused.unionByName(_early(inter))
