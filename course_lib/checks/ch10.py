"""Checks of chapter 10 (deployment)."""

from __future__ import annotations

from typing import Any

import torch

from course_lib.checks.verdict import UNREADABLE, Check, CheckFailed, expect_fields, expect_number, expect_tensor, generator
from course_lib.plain import Unsupported, type_name


class PadBatch(Check):
    """``pad_batch(sequences, pad_id)``: lists of token ids → ``(input_ids, attention_mask)``, both
    int64 of shape (batch, longest), ids padded on the right with ``pad_id``, mask 1 on real tokens.
    Catches: a bool mask, padding with 0 whatever ``pad_id``, padding on the left."""

    exercise = "10.1"

    def cases(self) -> list:
        g = generator(103)
        cases = [([[101, 7, 102]], 0), ([[101, 2023, 102], [101, 102]], 0), ([[5, 6, 7], [8]], 1),
                 ([[4, 4], [9, 9]], 2)]
        cases += [([torch.randint(1, 1000, (n,), generator=g).tolist() for n in (4, 9, 1, 6)], 3)]
        return cases

    def probe(self, pad_batch, case):
        sequences, pad_id = case
        return pad_batch([list(s) for s in sequences], pad_id)

    def judge(self, case, got):
        from torch.nn.utils.rnn import pad_sequence

        sequences, pad_id = case
        described = f"lengths {[len(s) for s in sequences]}, pad_id={pad_id}"
        if not isinstance(got, tuple) or len(got) != 2:
            raise CheckFailed(f"{described}: expected a tuple (input_ids, attention_mask), got {type_name(got)}")
        tensors = [torch.tensor(s, dtype=torch.long) for s in sequences]
        ids = pad_sequence(tensors, batch_first=True, padding_value=pad_id)
        mask = pad_sequence([torch.ones_like(t) for t in tensors], batch_first=True, padding_value=0)
        expect_tensor(got[0], ids, f"{described}: input_ids", atol=0, rtol=0)
        expect_tensor(got[1], mask, f"{described}: attention_mask", atol=0, rtol=0)


def _describe_payload(payload: Any) -> str:
    def short(value: Any) -> str:
        if isinstance(value, str) and len(value) > 12:
            return f"'{value[0]}' * {len(value)}"
        if isinstance(value, list) and len(value) > 3:
            return f"[{short(value[0])}] * {len(value)}"
        return repr(value)

    if isinstance(payload, dict):
        return "{" + ", ".join(f"{k!r}: {short(v)}" for k, v in payload.items()) + "}"
    return short(payload)


def _payloads() -> tuple[list, list]:
    """The valid and the invalid request bodies (plain data: dicts, lists, strings, ints, None)."""
    from course_lib.serve import MAX_CHARS, MAX_TEXTS

    good = [{"texts": "A fine film."}, {"texts": "  padded  "}, {"texts": ["one", " two ", "three"]},
            {"texts": ["x"] * MAX_TEXTS}, {"texts": "y" * MAX_CHARS}]
    bad = [{"texts": ""}, {"texts": "   "}, {"texts": []}, {"texts": ["ok", ""]}, {"texts": ["z"] * (MAX_TEXTS + 1)},
           {"texts": "w" * (MAX_CHARS + 1)}, {"texts": 42}, {"texts": ["ok", None]}, {"texts": None},
           {"text": "a typo in the key"}, {"texts": "ok", "extra": 1}, {}, ["not", "a", "dict"], "texts"]
    return good, bad


class ValidateTexts(Check):
    """``validate_texts(payload)``: for a valid body (a dict whose only key is ``"texts"``: one
    string, or a list of 1 to 32 strings; each 1 to 2000 characters after stripping spaces at both
    ends) the list of stripped texts; for anything else a ``ValueError``. The service's
    ``PredictRequest`` is the reference. Catches: texts returned unstripped, extra keys accepted,
    more than 32 texts accepted, an all-spaces text accepted (emptiness tested before stripping).

    A case is ``{"payload": ..., "valid": bool}``: on a valid body the learner's exceptions reach
    the framework as before ("your code raised ValueError: …"); on an invalid one the probe reports
    whether a ``ValueError`` (or a subclass) was raised."""

    exercise = "10.2"

    def cases(self) -> list:
        good, bad = _payloads()
        return [{"payload": p, "valid": True} for p in good] + [{"payload": p, "valid": False} for p in bad]

    def probe(self, validate_texts, case):
        if case["valid"]:
            return {"returned": validate_texts(case["payload"])}
        try:
            returned = validate_texts(case["payload"])
        except ValueError:
            return {"raised_value_error": True}
        return {"returned": returned}

    def judge(self, case, got):
        from course_lib.serve import PredictRequest

        payload = case["payload"]
        described = _describe_payload(payload)
        if type(got) is not dict or not (set(got) == {"returned"} or got == {"raised_value_error": True}):
            raise CheckFailed(UNREADABLE)
        if not case["valid"]:
            if "returned" in got:
                raise CheckFailed(f"payload {described} is invalid: expected a ValueError, got a return value")
            return
        if "returned" not in got:
            raise CheckFailed(UNREADABLE)
        returned = got["returned"]
        expected = PredictRequest.model_validate(payload).texts
        if not (type(returned) is list and all(type(t) is str for t in returned) and returned == expected):
            if isinstance(returned, Unsupported):
                shown = f"a value of type {type_name(returned)}"
            else:
                shown = repr(returned if not isinstance(returned, list) or len(returned) <= 3
                             else f"a list of {len(returned)}")
            raise CheckFailed(f"payload {described}: returned {shown}, expected "
                              f"{expected if len(expected) <= 3 else f'a list of {len(expected)}'!r}")


class Percentile(Check):
    """``percentile(values, q)``: the q-th percentile (0 ≤ q ≤ 100) of a list of numbers in any
    order, interpolating linearly between the two nearest ranks (as ``numpy.percentile``). The
    probe returns the value and the list as it is after the call. Catches: the nearest rank without
    interpolation, forgetting to sort, sorting the caller's list in place."""

    exercise = "10.3"

    def cases(self) -> list:
        g = generator(101)
        cases = [([5.0], 50), ([3.0, 1.0, 2.0], 50), ([4.0, 1.0, 3.0, 2.0], 50), ([10.0, 0.0], 25)]
        cases += [(torch.rand(n, generator=g).mul(40).add(5).tolist(), q)
                  for n in (20, 101) for q in (0, 50, 95, 99, 100)]
        return cases

    def probe(self, percentile, case):
        values, q = case
        return {"out": percentile(values, q), "values": values}

    def judge(self, case, got):
        import numpy as np

        values, q = case
        described = f"{len(values)} values, q={q}"
        if type(got) is not dict or set(got) != {"out", "values"}:
            raise CheckFailed(UNREADABLE)
        after = got["values"]
        if not (type(after) is list and len(after) == len(values)
                and all(type(a) in (int, float) and a == b for a, b in zip(after, values))):
            raise CheckFailed(f"{described}: the list was changed in place (sorted?); sort a copy")
        expect_number(got["out"], float(np.percentile(values, q)), described, atol=1e-9, rtol=1e-9)


class _FakePredictor:
    """Stands in for a model in 10.4: texts → (N, 2) probabilities that depend on the text's length."""

    labels = ("negative", "positive")
    version = "check-10.4"

    def __call__(self, texts: list[str]) -> torch.Tensor:
        if not texts or not all(type(t) is str for t in texts):
            raise ValueError("the predictor needs a non-empty list of strings")
        positive = torch.tensor([(len(t) % 7) / 7 + 0.05 for t in texts])
        return torch.stack([1 - positive, positive], dim=1)


def _expected_body(texts: list[str]) -> dict:
    probabilities = _FakePredictor()(texts)
    labels = _FakePredictor.labels
    return {"predictions": [{"label": labels[int(row.argmax())], "probabilities": dict(zip(labels, row.tolist()))}
                            for row in probabilities], "model_version": _FakePredictor.version}


_REQUESTS = [  # (what the request is, JSON body or raw text, the status it must get)
    ("two texts", {"texts": ["a good film", "dull"]}, 200),
    ("one string instead of a list", {"texts": "  an astonishing debut  "}, 200),
    ("an empty list", {"texts": []}, 422),
    ("33 texts (at most 32)", {"texts": ["fine"] * 33}, 422),
    ("a text of spaces only", {"texts": ["ok", "   "]}, 422),
    ("a text of 2,001 characters (at most 2,000)", {"texts": ["x" * 2001]}, 422),
    ("an unknown key beside texts", {"texts": ["ok"], "extra": 1}, 422),
    ("numbers instead of texts", {"texts": [1, 2]}, 422),
    ("no texts at all", {}, 422),
    ("a body that is not JSON", "texts=hello", 422),
]


class PredictEndpoint(Check):
    """``make_app(predictor)``: a FastAPI app whose ``POST /predict`` takes ``{"texts": …}`` (a string
    or a list of 1 to 32 strings, each 1 to 2,000 characters after stripping spaces, no other keys),
    answers ``{"predictions": [{"label", "probabilities"}], "model_version"}`` from the predictor, and
    422 for every bad request (a request schema does that). Tested through FastAPI's TestClient.
    Catches: unknown keys accepted, an empty list or a blank text accepted, a server error (500)
    instead of 422, the texts not stripped, a response without model_version."""

    exercise = "10.4"

    def cases(self) -> list:
        return [[name, body] for name, body, _ in _REQUESTS]

    def probe(self, make_app, case):
        from fastapi.testclient import TestClient

        client = TestClient(make_app(_FakePredictor()), raise_server_exceptions=False)
        _, body = case
        response = (client.post("/predict", json=body) if type(body) is dict else
                    client.post("/predict", content=body, headers={"content-type": "application/json"}))
        try:
            payload = response.json()
        except ValueError:
            payload = None
        return {"status": response.status_code, "body": payload if response.status_code == 200 else None}

    def judge(self, case, got):
        name, body = case
        status, payload = expect_fields(got, "status", "body")
        want = dict((n, s) for n, _, s in _REQUESTS)[name]
        if status != want:
            why = {500: "a server error: validate the request with a pydantic model so FastAPI answers 422",
                   200: "it was accepted", 404: "no POST /predict route", 405: "/predict does not accept POST"}
            raise CheckFailed(f"request with {name}: status {status}, expected {want}"
                              + (f" ({why[status]})" if status in why else ""))
        if want != 200:
            return
        texts = body["texts"] if type(body["texts"]) is list else [body["texts"]]
        expected = _expected_body([t.strip() for t in texts])
        if type(payload) is not dict or set(payload) != set(expected):
            keys = sorted(payload) if type(payload) is dict else type_name(payload)
            raise CheckFailed(f"request with {name}: the response's keys are {keys}, expected {sorted(expected)}")
        if payload["model_version"] != expected["model_version"]:
            raise CheckFailed(f"request with {name}: model_version must be the predictor's version")
        predictions = payload["predictions"]
        if type(predictions) is not list or len(predictions) != len(expected["predictions"]):
            raise CheckFailed(f"request with {name}: expected {len(texts)} predictions, one per text")
        for i, (p, e) in enumerate(zip(predictions, expected["predictions"])):
            if type(p) is not dict or set(p) != {"label", "probabilities"} or p["label"] != e["label"]:
                raise CheckFailed(f"request with {name}: prediction {i} must be {{'label': {e['label']!r}, "
                                  "'probabilities': {label: probability}} (the predictor gets each text stripped of "
                                  "surrounding spaces)")
            for label, value in e["probabilities"].items():
                expect_number(p["probabilities"].get(label) if type(p["probabilities"]) is dict else None, value,
                              f"request with {name}: prediction {i}, probability of {label} (of the stripped text)",
                              atol=1e-6)


CHECKS = {c.exercise: c for c in (PadBatch(), ValidateTexts(), Percentile(), PredictEndpoint())}
