"""A small domain-classification task made locally (no download): which domain does a sentence come from?

Four domains that match the users of this library: legal, medical, software and finance. Sentences are
built from templates and word lists written for this project. Templates are split between training and
test sets, so the test set holds sentence *shapes* the model never saw: it measures whether the model
learned the domains' vocabulary and meaning, not the templates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

LABELS = ("legal", "medical", "software", "finance")

_WORDS = {
    "legal": {
        "party": [
            "the plaintiff",
            "the defendant",
            "the appellant",
            "the tenant",
            "the landlord",
            "the claimant",
            "the respondent",
            "the licensee",
            "the employer",
            "the contractor",
        ],
        "thing": [
            "the contract",
            "the lease",
            "the settlement",
            "the injunction",
            "the statute",
            "the indemnity clause",
            "the arbitration agreement",
            "the deposition",
            "the subpoena",
            "the verdict",
        ],
        "act": [
            "breached",
            "appealed",
            "disputed",
            "terminated",
            "waived",
            "ratified",
            "challenged",
            "enforced",
            "rescinded",
            "litigated",
        ],
        "place": [
            "the district court",
            "the court of appeals",
            "the tribunal",
            "the supreme court",
            "the magistrate",
            "the jury",
            "the bar association",
            "the registry",
            "the clerk's office",
            "chambers",
        ],
    },
    "medical": {
        "party": [
            "the patient",
            "the surgeon",
            "the nurse",
            "the cardiologist",
            "the oncologist",
            "the pharmacist",
            "the radiologist",
            "the resident",
            "the anesthetist",
            "the pediatrician",
        ],
        "thing": [
            "the biopsy",
            "the prescription",
            "the blood pressure",
            "the MRI scan",
            "the dosage",
            "the tumor",
            "the infection",
            "the fracture",
            "the vaccine",
            "the insulin level",
        ],
        "act": [
            "diagnosed",
            "treated",
            "monitored",
            "prescribed",
            "examined",
            "operated on",
            "sutured",
            "screened",
            "vaccinated",
            "discharged",
        ],
        "place": [
            "the emergency room",
            "the intensive care unit",
            "the clinic",
            "the operating theatre",
            "the ward",
            "the pharmacy",
            "the outpatient department",
            "the hospital",
            "the laboratory",
            "the maternity ward",
        ],
    },
    "software": {
        "party": [
            "the developer",
            "the compiler",
            "the build server",
            "the maintainer",
            "the API client",
            "the test runner",
            "the database driver",
            "the garbage collector",
            "the scheduler",
            "the linter",
        ],
        "thing": [
            "the pull request",
            "the stack trace",
            "the memory leak",
            "the unit test",
            "the dependency",
            "the null pointer",
            "the merge conflict",
            "the configuration file",
            "the race condition",
            "the cache",
        ],
        "act": [
            "refactored",
            "deployed",
            "compiled",
            "debugged",
            "reverted",
            "profiled",
            "patched",
            "merged",
            "containerized",
            "benchmarked",
        ],
        "place": [
            "the repository",
            "the production cluster",
            "the staging environment",
            "the main branch",
            "the container registry",
            "the CI pipeline",
            "the kernel",
            "the backend service",
            "the IDE",
            "the issue tracker",
        ],
    },
    "finance": {
        "party": [
            "the investor",
            "the auditor",
            "the hedge fund",
            "the central bank",
            "the broker",
            "the treasurer",
            "the shareholder",
            "the underwriter",
            "the lender",
            "the portfolio manager",
        ],
        "thing": [
            "the dividend",
            "the bond yield",
            "the balance sheet",
            "the interest rate",
            "the quarterly earnings",
            "the mortgage",
            "the stock price",
            "the credit rating",
            "the cash flow",
            "the exchange rate",
        ],
        "act": [
            "hedged",
            "audited",
            "refinanced",
            "liquidated",
            "underwrote",
            "diversified",
            "leveraged",
            "amortized",
            "devalued",
            "forecast",
        ],
        "place": [
            "the stock exchange",
            "the trading floor",
            "the bond market",
            "the annual report",
            "the ledger",
            "the treasury",
            "the investment committee",
            "the brokerage account",
            "the pension fund",
            "the balance statement",
        ],
    },
}

_TEMPLATES = [
    "{party} {act} {thing}.",
    "According to {place}, {party} {act} {thing} last week.",
    "{thing} was {act} by {party} before anyone noticed.",
    "Yesterday {party} {act} {thing} at {place}.",
    "We learned that {party} had {act} {thing}.",
    "Nobody expected {party} to have {act} {thing} so quickly.",
    "Reports from {place} say {thing} was {act}.",
    "After a long review, {party} {act} {thing} again.",
    "Was {thing} really {act} by {party}?",
    "In {place}, {party} finally {act} {thing}.",
    "The note from {place} mentions {thing} and {party}.",
    "Everyone at {place} talked about how {party} {act} {thing}.",
]
_TEST_TEMPLATES = {2, 6, 10}  # held out: the test set uses sentence shapes never seen in training


@dataclass
class Example:
    text: str
    label: int


def make_domain_dataset(n_train: int = 2000, n_test: int = 400, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Balanced train and test sets; deterministic for a given seed."""
    rng = random.Random(seed)
    train_templates = [t for i, t in enumerate(_TEMPLATES) if i not in _TEST_TEMPLATES]
    test_templates = [t for i, t in enumerate(_TEMPLATES) if i in _TEST_TEMPLATES]

    def sample(n: int, templates: list[str]) -> list[Example]:
        out = []
        for i in range(n):
            label = i % len(LABELS)
            words = _WORDS[LABELS[label]]
            text = rng.choice(templates).format(**{k: rng.choice(v) for k, v in words.items()})
            out.append(Example(text[0].upper() + text[1:], label))
        rng.shuffle(out)
        return out

    return sample(n_train, train_templates), sample(n_test, test_templates)
