#!/usr/bin/env python3
"""Segment a text file with Apache Spark, `cws segment` as the filter.

    spark-submit scripts/spark_segment.py INPUT OUTPUT_DIR [--merge FILE]
    python scripts/spark_segment.py INPUT OUTPUT_DIR --master 'local[2]' --merge FILE

Each partition of the input is piped through one `cws segment --threads 1`
process (the binary must be on every worker: `--cws PATH`, or ship it with
`spark-submit --files cws` and pass `--cws ./cws`). Spark keeps the order:
`textFile` partitions follow the file, `pipe` keeps the order inside a
partition, and `saveAsTextFile` writes OUTPUT_DIR/part-00000, part-00001, ...
in partition order, so those files concatenated in name order are the
segmented input in its order. `--merge FILE` does that concatenation (on a
local file system; on HDFS, `hdfs dfs -getmerge OUTPUT_DIR FILE`).

What comes back is line for line the segmentation of the input, with Spark's
line handling: `textFile` drops a UTF-8 BOM at the start of the file and the
line ends (LF, CRLF, and a lone CR, which it takes for a line end), and
`saveAsTextFile` ends every line with LF. So the result equals, byte for byte,
`cws segment` run on the input with the BOM removed, CRLF turned into LF and a
final LF added (docs/scale-out.md).
"""

import argparse
import glob
import os
import shlex
import shutil
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="text file (any path Spark reads: local, hdfs://, s3a://)")
    ap.add_argument("output", help="output folder (must not exist): part-NNNNN files")
    ap.add_argument("--cws", default="cws", help="the cws binary on the workers (default: cws on PATH)")
    ap.add_argument(
        "--cws-args",
        default="",
        help="more arguments for cws segment, e.g. '--model ./model' (default: the built-in model)",
    )
    ap.add_argument("--threads", type=int, default=1, help="--threads of each cws process (default 1)")
    ap.add_argument(
        "--partitions",
        type=int,
        default=0,
        help="at least this many input partitions (default: 4 per core Spark has)",
    )
    ap.add_argument("--master", default=None, help="Spark master when run with python (e.g. local[2])")
    ap.add_argument("--merge", default=None, help="then concatenate the part files into this local file")
    args = ap.parse_args()

    from pyspark import SparkConf, SparkContext

    conf = SparkConf().setAppName("cws segment").set("spark.ui.showConsoleProgress", "false")
    if args.master:
        conf = conf.setMaster(args.master)
    sc = SparkContext(conf=conf)
    sc.setLogLevel("WARN")
    partitions = args.partitions or 4 * sc.defaultParallelism
    command = [args.cws, "segment", "--threads", str(args.threads)] + shlex.split(args.cws_args)

    start = time.time()
    lines = sc.textFile(args.input, minPartitions=partitions)
    # checkCode: a cws process that fails fails the task (and the job).
    n = lines.getNumPartitions()
    lines.pipe(shlex.join(command), checkCode=True).saveAsTextFile(args.output)
    sc.stop()
    print(f"spark_segment: {n} partitions, {time.time() - start:.1f} s", file=sys.stderr)

    if args.merge:
        parts = sorted(glob.glob(os.path.join(args.output, "part-*")))
        with open(args.merge, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        print(f"spark_segment: {len(parts)} part files -> {args.merge}", file=sys.stderr)


if __name__ == "__main__":
    main()
