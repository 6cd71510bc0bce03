"""Figures for issue 8: each hostile-auditor attack with its defence off and on.

Runs the attacks of ``tests/adversarial/`` (same lab, same code) against real server
processes: ``auditor-server serve`` with every defence on, and the test-only launcher
``tests/adversarial/unsafe_server.py`` with one defence off. Prints one table per attack.

    PYTHONPATH=$PWD .venv/bin/python bench/attack_figures.py [--lab DIR]

``--lab DIR`` (or ``$ADVERSARIAL_LAB_DIR``) keeps the built lab (corpus, memorizing model,
index: about a minute on 2 cores) for the next run; by default it is built in a temporary
directory. Latencies are from a shared 2-core machine with the abuser's client threads in
this process: compare the columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.adversarial.attacks import (
    Ranking,
    Starvation,
    chain_generate,
    email_candidates,
    garbage_flood,
    phone_candidates,
    score_ranking,
    starvation,
)
from tests.adversarial.lab import (
    WITHHELD_BUDGET,
    AttackLab,
    Server,
    build_attack_lab,
    check_memorized,
    longest_common_substring,
    normalized_overlap,
    withheld_windows,
)

WHOAMI_P99_TARGET_MS = 50


class Bench:
    def __init__(self, lab: AttackLab, scratch: Path) -> None:
        self.lab = lab
        self.scratch = scratch
        self.count = 0

    @contextmanager
    def server(self, *off: str) -> Iterator[Server]:
        self.count += 1
        server = self.lab.start(self.scratch / f"state-{self.count}", off=off)
        try:
            yield server
        finally:
            server.stop()


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def _describe(r: Ranking) -> str:
    if r.true_outcome.code == "OK":
        return f"rank {r.rank} of {len(r.candidates)} ({r.answered} answered)"
    kinds = ", ".join(f"{n} {msg[:24]}…" for (_, msg), n in r.kinds().most_common())
    return (
        f"{r.answered}/{len(r.candidates)} answered; refused: {kinds}; true digits look like "
        f"{r.look_alikes} of them"
    )


def score_figures(bench: Bench) -> None:
    chat = bench.lab.target_chat()
    rows = []
    with bench.server("withheld_guard") as off, bench.server() as on:
        for name, prompt, candidates, true in (
            ("phone, last 2 digits", chat.phone_prompt(), phone_candidates(), chat.phone_digits),
            (
                "email digits",
                chat.email_prompt(),
                email_candidates(),
                chat.email_digits + "@",
            ),
        ):
            r_off = score_ranking(off, "scorer", prompt, candidates, true)
            r_on = score_ranking(on, "scorer", prompt, candidates, true)
            rows.append([name, f"{r_off.chance_rank:g}", _describe(r_off), _describe(r_on)])
        prefix = chat.phone[:-2]
        r_off = score_ranking(off, "oracle", prefix, phone_candidates(), chat.phone_digits)
        r_on = score_ranking(on, "oracle", prefix, phone_candidates(), chat.phone_digits)
        rows.append(
            [
                f"oracle: '{prefix}' + 00..99",
                f"{r_off.chance_rank:g}",
                _describe(r_off),
                f"refused {r_on.refused}: " + _describe(r_on),
            ]
        )
    table(
        f"1. Score ranks candidate secrets (chat {chat.record_id}; budget {WITHHELD_BUDGET})",
        ["attack", "chance rank", "guard off", "guard on"],
        rows,
    )


def chain_figures(bench: Bench) -> None:
    from auditor_server.policy.guard import ShingleSets, normalize

    chat = bench.lab.target_chat()
    k = ShingleSets.load(bench.lab.index / "guard").shingle_chars
    rows = []
    for label, off in (("guard off", ("withheld_guard",)), ("guard on", ())):
        with bench.server(*off) as server:
            chain = chain_generate(server, "chainer", chat.chain_prompt())
        rows.append(
            [
                label,
                f"{normalized_overlap(chain.text, chat.email)}/{len(normalize(chat.email))}",
                f"{normalized_overlap(chain.text, chat.phone)}/{len(normalize(chat.phone))}",
                longest_common_substring(normalize(chain.text), normalize(chat.text)),
                len(withheld_windows(chain.text, bench.lab, k)),
                sum(chain.constrained),
                sum(chain.scrubbed),
            ]
        )
    table(
        f"3. Chained Generate (14 x 5 greedy tokens from the chat's opening; shingle {k})",
        [
            "server",
            "email chars recovered",
            "phone chars recovered",
            "longest stretch of the chat",
            "withheld shingles in output",
            "constrained_tokens",
            "scrubbed_items",
        ],
        rows,
    )


def _ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:.0f}"  # nan: none answered


def starvation_figures(bench: Bench) -> None:
    rows = []
    for label, off in (("fair scheduling off", ("fair_scheduling",)), ("on", ())):
        with bench.server(*off) as server:
            run: Starvation = starvation(server)
        for phase, lat in (("idle", run.idle), ("abused", run.abused)):
            rows.append(
                [
                    label,
                    phase,
                    len(lat.whoami),
                    _ms(lat.whoami_p50),
                    _ms(lat.whoami_p99),
                    dict(lat.whoami_failed) or "",
                    len(lat.attribute),
                    _ms(lat.attribute_p50),
                    dict(lat.attribute_failed) or "",
                    f"{run.unread_cancelled} cancelled, {run.unread_waited} waited"
                    if phase == "abused"
                    else "",
                ]
            )
    table(
        "5. Starvation: victim latency (ms) while one auditor runs 8 x 64-item batches and "
        f"8 unread streams (target: WhoAmI p99 <= {WHOAMI_P99_TARGET_MS} ms)",
        [
            "server",
            "phase",
            "WhoAmI n",
            "p50",
            "p99",
            "WhoAmI failed",
            "Attribute answered",
            "p50",
            "Attribute failed",
            "unread streams",
        ],
        rows,
    )


def ledger_figures(bench: Bench) -> None:
    rows = []
    for label, off in (("off the ledger: off", ("unauthenticated_off_ledger",)), ("on", ())):
        with bench.server(*off) as server:
            flood = garbage_flood(server, 300)
        rows.append([label, flood.growth, dict(flood.codes)])
    table(
        "6. 300 unauthenticated 10-byte requests",
        ["server", "ledger growth (leaves)", "statuses"],
        rows,
    )


def extra_figures(bench: Bench) -> None:
    lab = bench.lab
    text = str(lab.public_target()["text"])
    rows = []
    for label, off in (("log-prob gate off", ("logprob_gate",)), ("on", ())):
        with bench.server(*off) as server, server.client("attr_tp") as tp:
            answer = tp.attribute(text[:60], text[60:120], top_k=3).body.attribute
            rows.append(
                [
                    label,
                    answer.HasField("logprob"),
                    f"{answer.logprob:.3f}" if answer.HasField("logprob") else "",
                ]
            )
    table(
        "2. Attribute carries Score (third party, no Score)",
        ["server", "logprob present", "value"],
        rows,
    )

    chat = lab.target_chat()
    customers = [c.email_name for c in lab.chats]
    firsts = [c.split(".")[0] for c in customers]
    lasts = [c.split(".", 1)[1] for c in customers]
    others = [
        f"{f}.{la}"
        for f, la in zip(firsts, lasts[1:] + lasts[:1], strict=True)
        if f"{f}.{la}" not in customers
    ]
    rows = []
    with bench.server() as server, server.client("member") as client:
        hits = [
            client.generate(n, max_new_tokens=3).body.generate.constrained_tokens > 0
            for n in customers
        ]
        false = [
            client.generate(n, max_new_tokens=3).body.generate.constrained_tokens > 0
            for n in others
        ]
        left = client.whoami().body.whoami.withheld_left_today
    rows.append(
        [
            f"{sum(hits)}/{len(hits)}",
            f"{sum(false)}/{len(false)}",
            f"{WITHHELD_BUDGET - left} of {WITHHELD_BUDGET}",
        ]
    )
    table(
        f"Generate steering as a membership oracle (greedy Generate of '{chat.email_name}'-like "
        "names, guard on)",
        ["customers steered", "non-customers steered", "withheld budget spent"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", type=Path, default=os.environ.get("ADVERSARIAL_LAB_DIR"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="attack-figures-") as tmp:
        scratch = Path(tmp)
        os.environ["AUDITOR_HEAD_STORE"] = str(scratch / "heads")  # never the user's store
        started = time.perf_counter()
        lab = build_attack_lab(args.lab or scratch / "lab")
        check_memorized(lab)
        memo = lab.memorization
        print(
            f"lab: {lab.root} (ready in {time.perf_counter() - started:.0f} s; built in "
            f"{lab.build_seconds}; model trained in {memo['train_s']} s, final loss "
            f"{float(memo['final_loss']):.3f})"
        )  # type: ignore[arg-type]
        ranks = sorted(int(m["phone_rank"]) for m in memo["chats"])  # type: ignore[union-attr]
        recalled = sum(bool(m["email_recalled"]) for m in memo["chats"])  # type: ignore[union-attr]
        print(
            f"memorization: email digits recalled greedily {recalled}/{len(ranks)}; "
            f"phone last-two-digit ranks {ranks} (chance 50.5)"
        )
        bench = Bench(lab, scratch)
        for figures in (
            score_figures,
            extra_figures,
            chain_figures,
            starvation_figures,
            ledger_figures,
        ):
            t0 = time.perf_counter()
            figures(bench)
            print(f"\n({figures.__name__}: {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
