#!/usr/bin/env python3
"""Markdown tables from the JSON lines that scripts/bench.sh writes.

  python3 scripts/bench_report.py bench-out/results.jsonl > report.md

Standard library only. Rows that need a cws model which the run was not given
are printed as placeholders.
"""
import json
import sys

SEGMENTERS = {
    "cws-model": "cws, model",
    "cws-dict": "cws `--dict-only` (FMM, full training word list)",
    "jieba": "jieba (bundled dictionary, HMM)",
    "pkuseg-default": "pkuseg, bundled model + dictionary",
    "pkuseg-10pct": "pkuseg, 10% split model + bundled dictionary ¹",
    "pkuseg-10pct-nodict": "pkuseg, 10% split model alone ¹",
}
CORPORA = {"pku": "PKU", "msr": "MSR", "gsdsimp-dev": "gsdsimp-dev ³"}
PLACEHOLDER = {"pku": "CWS_MODEL_PKU", "msr": "CWS_MODEL_MSR or a cws with `--standard msr`",
               "gsdsimp-dev": "CWS_MODEL_PKU"}
GSD_NOTE = ("³ gsdsimp-dev: the dev split of UD Chinese GSDSimp (500 Wikipedia sentences, `ud/` in the data "
            "folder), a cross-domain set whose segmentation standard is the treebank's, not PKU's: every system "
            "runs as it does on PKU (cws's PKU model, pkuseg's PKU 10% split models), and OOV = not in the PKU "
            "training word list (the set has no training list of its own).")
FOOTNOTE = ("¹ pkuseg trained (pkuseg.train, PKUSEG_ITERS iterations, default 20) on the same 10% training split as cws; "
            "the test text is shown to it normalized as that split is (`--normalize`), "
            "the output keeps the original characters.")


def fmt_int(x):
    return f"{x:,.0f}"


def main():
    rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
    by_part = {}
    for r in rows:
        by_part.setdefault(r["part"], []).append(r)
    out = []
    w = out.append

    machine = (by_part.get("machine") or [{}])[0]
    end = (by_part.get("machine-end") or [{}])[0]
    w("### Machine\n")
    w(f"- CPU: {machine.get('cpu', '?')}, {machine.get('nproc', '?')} cores (`nproc`), "
      f"{machine.get('mem_gib', '?')} GiB memory")
    w(f"- {machine.get('cws', 'cws')}; {machine.get('threads', '?')} threads for cws and PyTorch; "
      "jieba and pkuseg: one process, one thread")
    w(f"- run {machine.get('date', '?')} to {end.get('date', '?')}; load average (1/5/15 min) "
      f"at start {machine.get('loadavg_start', '?')}, at end {end.get('loadavg_end', '?')}")
    w("")

    model = by_part.get("model", [])
    if model:
        w("### Model throughput (CPU, f32, batch {} x seq {})\n".format(model[0]["batch"], model[0]["seq"]))
        torch_name = next((r["system"] for r in model if r["system"].startswith("pytorch")), "pytorch")
        w(f"PyTorch = {torch_name}, transformers BertForTokenClassification (eager attention).\n")
        w("| shape | mode | cws tokens/s | PyTorch tokens/s | cws / PyTorch | cws s/step | PyTorch s/step "
          "| steps | cws peak MiB | PyTorch peak MiB |")
        w("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
        keys = []
        for r in model:
            k = (r["shape"], r["mode"])
            if k not in keys:
                keys.append(k)
        for shape, mode in keys:
            c = next((r for r in model if r["system"] == "cws" and (r["shape"], r["mode"]) == (shape, mode)), None)
            t = next((r for r in model if r["system"] != "cws" and (r["shape"], r["mode"]) == (shape, mode)), None)

            def g(r, key, f=lambda x: f"{x:.3f}"):
                return f(r[key]) if r else "—"

            ratio = f"{c['tokens_per_s'] / t['tokens_per_s']:.2f}x" if c and t else "—"
            steps = (c or t)["steps"]
            w(f"| {shape} | {mode} | {g(c, 'tokens_per_s', fmt_int)} | {g(t, 'tokens_per_s', fmt_int)} | {ratio} "
              f"| {g(c, 'seconds_per_step')} | {g(t, 'seconds_per_step')} | {steps} "
              f"| {g(c, 'peak_rss_mib', fmt_int)} | {g(t, 'peak_rss_mib', fmt_int)} |")
        w("")

    seg = by_part.get("segment", [])
    if seg:
        r0 = seg[0]
        w(f"### Segmentation speed ({r0['input'].split('/')[-1]}, {r0['chars']:,} non-whitespace characters, "
          f"best of {machine.get('repeat', '?')} pass(es))\n")
        w("| segmenter | system | chars/s | seconds | peak RSS MiB | threads |")
        w("|---|---|--:|--:|--:|--:|")
        names = [r["segmenter"] for r in seg]
        if "cws-model" not in names:
            w("| cws, model | _placeholder: needs CWS_MODEL_PKU_ | — | — | — | — |")
        for r in seg:
            w(f"| {SEGMENTERS.get(r['segmenter'], r['segmenter'])} | {r['system']} | {fmt_int(r['chars_per_s'])} "
              f"| {r['seconds']:.3f} | {fmt_int(r['peak_rss_mib'])} | {r['threads']} |")
        if any(r["segmenter"].startswith("pkuseg-10pct") for r in seg):
            w("\n" + FOOTNOTE)
        w("")

    acc = by_part.get("accuracy", [])
    if acc:
        gsd = any(r["corpus"] == "gsdsimp-dev" for r in acc)
        w("### Accuracy (SIGHAN 2005 test sets{}, scored by `cws eval`; OOV = not in the full training word list)\n"
          .format(" and the GSDSimp dev set ³" if gsd else ""))
        w("| segmenter | corpus | P | R | F1 | OOV rate | OOV-R | IV-R |")
        w("|---|---|--:|--:|--:|--:|--:|--:|")
        mismatch_notes = set()
        corpora = list(CORPORA) + sorted({r["corpus"] for r in acc} - set(CORPORA))
        for corpus in corpora:
            rs = [r for r in acc if r["corpus"] == corpus]
            if not rs:
                continue
            name = CORPORA.get(corpus, corpus)
            if not any(r["segmenter"] == "cws-model" for r in rs):
                w(f"| cws, model | {name} | _placeholder: needs {PLACEHOLDER.get(corpus, 'a cws model')}_ "
                  "| — | — | — | — | — |")
            counts = {len(r.get("text_mismatch_lines") or []) for r in rs}
            for r in rs:
                bad = len(r.get("text_mismatch_lines") or [])
                note = ""
                if bad and len(counts) == 1:
                    note = " ²"
                    mismatch_notes.add(f"² {name.rstrip(' ³')}: on {bad} lines the official test input and gold file "
                                       "do not spell the same text (a character sits on a neighbouring line in the "
                                       "gold file); the same for every segmenter, scored as the official script does.")
                elif bad:
                    note = f" ({bad} lines do not spell the gold text)"
                label = SEGMENTERS.get(r["segmenter"], r["segmenter"])
                if r["segmenter"] == "cws-model" and r.get("model"):
                    label += f" ({r['model']})"
                w(f"| {label}{note} | {name} "
                  f"| {r['precision']:.3f} | {r['recall']:.3f} | **{r['f1']:.3f}** | {r['oov_rate']:.3f} "
                  f"| {r['oov_recall']:.3f} | {r['iv_recall']:.3f} |")
        if any(r["segmenter"].startswith("pkuseg-10pct") for r in acc):
            w("\n" + FOOTNOTE)
        for n in sorted(mismatch_notes):
            w("\n" + n)
        if gsd:
            w("\n" + GSD_NOTE)
        w("")

    train = by_part.get("pkuseg-train", [])
    if train:
        w("pkuseg training on the 10% splits: " + "; ".join(
            f"{r['corpus']}: {r['iters']} iterations, {r['seconds']:.0f} s" for r in train) + ".\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
