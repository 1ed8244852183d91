//! Scaling out with the engines people already run: `cws segment` as the
//! filter of GNU parallel gives byte for byte what one process gives.
//!
//! The test generates a text (fixed seed: words, punctuation, Latin and
//! number tokens, whitespace runs, blank lines, CRLF on some lines, a UTF-8 BOM
//! at the start, one line longer than parallel's block, no newline at the end),
//! segments it once as one process (`--input F --output A`), then through
//! `parallel --pipe --keep-order -j 2 --block 1M` with `--threads 1` per
//! process, and checks that the two outputs are identical and that deleting
//! the inserted separators gives the input back.
//!
//! The file is 8 MB by default (several parallel blocks and the long line,
//! quick enough for every `cargo test`); CI sets `CWS_SCALE_OUT_MB=50` (the
//! size docs/scale-out.md measures), and any size can be asked for. Where GNU
//! parallel is missing the test skips, unless `CWS_REQUIRE_PARALLEL=1` (as in
//! CI). `CWS_SCALE_OUT_DIR=DIR` writes the files into DIR and keeps them (the
//! measurements in docs/scale-out.md were taken on that input).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// splitmix64: a small, fixed generator, so the text never changes with a
/// dependency's version.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// The vocabulary, separated by spaces.
const WORDS: &str = "我们 他们 你 她 这 那个 一个 今天 明天 昨天 现在 \
     已经 正在 可以 应该 需要 没有 不是 就是 还是 因为 \
     所以 但是 如果 虽然 而且 或者 以及 关于 对于 通过 \
     根据 中国 北京 上海 广州 深圳 南京 西安 长江 黄河 \
     世界 国家 政府 人民 经济 社会 文化 历史 科学 技术 \
     教育 学校 大学 学生 老师 研究 发展 建设 改革 开放 \
     市场 企业 公司 工作 生活 问题 情况 方面 时间 地方 \
     城市 农村 环境 保护 资源 能源 交通 铁路 飞机 汽车 \
     电脑 手机 网络 信息 数据 系统 软件 模型 语言 汉字 \
     词语 句子 文章 新闻 记者 报道 会议 代表 主席 委员会 \
     人民代表大会 联合国 图书馆 博物馆 天安门 长城 故宫 \
     春节 中秋节 朋友 家庭 孩子 父母 医生 医院 健康 运动 \
     足球 比赛 音乐 电影 艺术 美丽 重要 主要 基本 全面 \
     积极 认真 非常 十分 特别 更加 进一步 提高 加强 促进 \
     推动 实现 完成 开始 结束 继续 增加 减少 成为 认为 \
     表示 指出 希望 喜欢 知道 看见 听说 觉得 学习 参加 \
     举行 成立 来自 走 跑 吃 喝 说 看 想 做 的 了 在 \
     是 和 与 也 都 很 不 把 被 让 给 从 向 到 对 \
     为 上 下 中 里 外 前 后 年 月 日 人 个 些 种 \
     次 位 家 亿 万 元 公里";

const LATIN: &[&str] = &[
    "iPhone", "CPU", "GDP", "WTO", "Python", "Linux", "BERT", "NBA", "APEC", "DNA", "Windows",
    "e-mail", "OK", "Wi-Fi", "ABC",
];

const ADDRESSES: &[&str] = &[
    "http://www.example.cn/news/2024.html",
    "www.example.com.cn",
    "info@example.cn",
    "https://example.org/a?b=1&c=2",
];

const INNER_PUNCT: &[&str] = &[
    "，", "、", "；", "：", "——", "（", "）", "《", "》", ",", "·",
];
const END_PUNCT: &[&str] = &["。", "！", "？", "……", "。", "。", ".", "!"];
const SPACES: &[&str] = &[" ", "  ", "\u{3000}", "\t"];

fn number(rng: &mut Rng) -> String {
    let n = rng.below(100_000);
    match rng.below(6) {
        0 => format!("{}年", 1900 + rng.below(130)),
        1 => format!("{}.{}%", rng.below(100), rng.below(10)),
        2 => n
            .to_string()
            .chars()
            .map(|c| char::from_u32(c as u32 - '0' as u32 + '０' as u32).unwrap())
            .collect(),
        3 => format!("{}月{}日", 1 + rng.below(12), 1 + rng.below(28)),
        4 => format!("{}.{:02}", rng.below(1000), rng.below(100)),
        _ => n.to_string(),
    }
}

fn sentence(rng: &mut Rng, words: &[&str], out: &mut String) {
    let quoted = rng.chance(5);
    if quoted {
        out.push('“');
    }
    for _ in 0..3 + rng.below(14) {
        match rng.below(1000) {
            0..=799 => out.push_str(rng.pick(words)),
            800..=849 => out.push_str(&number(rng)),
            850..=899 => out.push_str(rng.pick(LATIN)),
            900..=979 => out.push_str(rng.pick(INNER_PUNCT)),
            980..=994 => out.push_str(rng.pick(SPACES)),
            _ => out.push_str(rng.pick(ADDRESSES)),
        }
    }
    out.push_str(rng.pick(END_PUNCT));
    if quoted {
        out.push('”');
    }
}

/// About `bytes` bytes of text (a little more), the same for the same size.
fn generate(bytes: usize) -> Vec<u8> {
    let mut rng = Rng(20_050_101);
    let words: Vec<&str> = WORDS.split(' ').collect();
    let mut text = String::with_capacity(bytes + 4096);
    text.push('\u{feff}');
    let mut line = String::new();
    let mut long_line_done = false;
    while text.len() < bytes {
        line.clear();
        if rng.chance(3) {
            // A blank line, or one of whitespace only.
            if rng.chance(30) {
                line.push_str(rng.pick(SPACES));
            }
        } else if !long_line_done && text.len() > bytes / 2 {
            // One line longer than parallel's 1M block: parallel extends
            // the block to the line's end.
            while line.len() < (1 << 20) + (1 << 19) {
                sentence(&mut rng, &words, &mut line);
            }
            long_line_done = true;
        } else {
            if rng.chance(10) {
                line.push_str(rng.pick(SPACES));
            }
            let sentences = if rng.chance(2) {
                20 + rng.below(60)
            } else {
                1 + rng.below(5)
            };
            for _ in 0..sentences {
                sentence(&mut rng, &words, &mut line);
                if rng.chance(5) {
                    line.push_str(rng.pick(SPACES));
                }
            }
        }
        text.push_str(&line);
        text.push_str(if rng.chance(10) { "\r\n" } else { "\n" });
    }
    // The last line has no line end.
    while text.ends_with(['\n', '\r']) {
        text.pop();
    }
    text.push_str("最后一行没有换行符");
    text.into_bytes()
}

/// Whether `parallel` is GNU parallel (moreutils has another `parallel`
/// without `--pipe`).
fn gnu_parallel() -> bool {
    Command::new("parallel")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("GNU parallel"))
        .unwrap_or(false)
}

/// Checks that `out` is `input` with `delimiter` bytes inserted (and at least
/// `min_inserted` of them), reading both as streams.
fn assert_only_delimiters_inserted(input: &Path, out: &Path, delimiter: u8, min_inserted: u64) {
    let mut a = BufReader::with_capacity(1 << 20, File::open(input).unwrap()).bytes();
    let mut b = BufReader::with_capacity(1 << 20, File::open(out).unwrap()).bytes();
    let (mut pos_in, mut pos_out, mut inserted) = (0u64, 0u64, 0u64);
    let mut next_in = a.next().map(Result::unwrap);
    for byte in b.by_ref() {
        let byte = byte.unwrap();
        if Some(byte) == next_in {
            next_in = a.next().map(Result::unwrap);
            pos_in += 1;
        } else {
            assert_eq!(
                byte,
                delimiter,
                "{}: byte {pos_out} is neither input byte {pos_in} ({next_in:?}) nor the delimiter",
                out.display()
            );
            inserted += 1;
        }
        pos_out += 1;
    }
    assert_eq!(
        next_in,
        None,
        "{} ends at input byte {pos_in} of {}",
        out.display(),
        input.display()
    );
    assert!(
        inserted >= min_inserted,
        "only {inserted} separators inserted"
    );
}

/// Whether two files have the same bytes; on a difference, where it is.
fn assert_same_bytes(a: &Path, b: &Path) {
    let (la, lb) = (
        std::fs::metadata(a).unwrap().len(),
        std::fs::metadata(b).unwrap().len(),
    );
    let mut ra = BufReader::with_capacity(1 << 20, File::open(a).unwrap());
    let mut rb = BufReader::with_capacity(1 << 20, File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut at = 0u64;
    loop {
        let n = ra.read(&mut ba).unwrap();
        let m = if n == 0 {
            rb.read(&mut bb).unwrap()
        } else {
            let mut got = 0;
            while got < n {
                let k = rb.read(&mut bb[got..n]).unwrap();
                if k == 0 {
                    break;
                }
                got += k;
            }
            got
        };
        if let Some(i) = ba[..n.min(m)]
            .iter()
            .zip(&bb[..n.min(m)])
            .position(|(x, y)| x != y)
        {
            panic!(
                "{} and {} differ at byte {} (sizes {la} and {lb})",
                a.display(),
                b.display(),
                at + i as u64
            );
        }
        assert_eq!(
            n,
            m,
            "{} and {} differ in length ({la} and {lb})",
            a.display(),
            b.display()
        );
        if n == 0 {
            break;
        }
        at += n as u64;
    }
}

#[test]
fn gnu_parallel_gives_the_same_bytes_as_one_process() {
    if !gnu_parallel() {
        assert!(
            std::env::var("CWS_REQUIRE_PARALLEL").as_deref() != Ok("1"),
            "CWS_REQUIRE_PARALLEL=1 but GNU parallel was not found"
        );
        eprintln!("skipping: GNU parallel not found");
        return;
    }
    let megabytes: usize = std::env::var("CWS_SCALE_OUT_MB")
        .ok()
        .map(|v| v.parse().expect("CWS_SCALE_OUT_MB is a number"))
        .unwrap_or(8);
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = match std::env::var_os("CWS_SCALE_OUT_DIR") {
        Some(d) => {
            std::fs::create_dir_all(&d).unwrap();
            PathBuf::from(d)
        }
        None => tmp.path().to_path_buf(),
    };
    let (input, one, many) = (
        dir.join("input.txt"),
        dir.join("one.txt"),
        dir.join("parallel.txt"),
    );
    let text = generate(megabytes * 1_000_000);
    let chars = String::from_utf8_lossy(&text).chars().count();
    std::fs::write(&input, &text).unwrap();
    let lines = text.split(|&b| b == b'\n').count();
    drop(text);
    eprintln!(
        "scale_out: {} ({} bytes, {chars} chars, {lines} lines)",
        input.display(),
        std::fs::metadata(&input).unwrap().len()
    );

    let cws = env!("CARGO_BIN_EXE_cws");
    let start = Instant::now();
    let res = Command::new(cws)
        .args(["segment", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&one)
        .stdin(Stdio::null())
        .output()
        .expect("cws runs");
    assert!(
        res.status.success(),
        "cws segment: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    eprintln!(
        "scale_out: one process: {:.1} s",
        start.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    let res = Command::new("parallel")
        .args([
            "--will-cite",
            "--pipe",
            "--keep-order",
            "--halt",
            "now,fail=1",
            "-j",
            "2",
            "--block",
            "1M",
            "-q",
            cws,
            "segment",
            "--threads",
            "1",
        ])
        .stdin(File::open(&input).unwrap())
        .stdout(File::create(&many).unwrap())
        .stderr(Stdio::piped())
        .output()
        .expect("parallel runs");
    assert!(
        res.status.success(),
        "parallel ... cws segment: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    eprintln!(
        "scale_out: GNU parallel, 2 processes: {:.1} s",
        start.elapsed().as_secs_f64()
    );

    assert_same_bytes(&one, &many);
    assert_only_delimiters_inserted(&input, &one, b' ', chars as u64 / 4);
}

#[test]
fn the_generated_text_has_what_the_scale_out_test_needs() {
    let text = generate(3_000_000);
    let s = std::str::from_utf8(&text).unwrap();
    assert!(s.starts_with('\u{feff}'));
    assert!(!s.ends_with('\n'));
    assert!(s.contains("\r\n") && s.contains("\n\n"));
    assert!(s.split('\n').any(|l| l.len() > 1 << 20));
    assert!(s.contains('\u{3000}') && s.contains('\t') && s.contains("iPhone"));
    // Deterministic, and the same text as when docs/scale-out.md was measured.
    assert_eq!(generate(3_000_000), text);
    let fnv = text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    assert_eq!(
        fnv, 0xe8e1_9be1_3db1_654d,
        "generated text changed: FNV-1a {fnv:#018x}"
    );
}
