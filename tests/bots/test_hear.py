"""HEAR's kinds: what each accepts, the value it gives, and the re-ask message."""

from __future__ import annotations

import pytest

from gbmedia.bots.hear import options_of, reask_message, validate


@pytest.mark.parametrize(
    ("kind", "answer", "language", "value"),
    [
        ("", "  anything ", "en", "  anything "),
        ("EMAIL", "Ana@Example.com", "en", "ana@example.com"),
        ("INTEGER", "42", "en", 42),
        ("NUMBER", "3,5", "pt", 3.5),
        ("NUMBER", "-2.25", "en", -2.25),
        ("BOOLEAN", "Sim", "pt", True),
        ("BOOLEAN", "não", "pt", False),
        ("BOOLEAN", "yes", "en", True),
        ("NAME", "ana  souza", "en", "ana souza"),
        ("DATE", "31/12/2026", "pt", "2026-12-31"),
        ("DATE", "12/31/2026", "en", "2026-12-31"),
        ("DATE", "2026-12-31", "en", "2026-12-31"),
        ("HOUR", "9:05", "en", "09:05"),
        ("HOUR", "14h30", "pt", "14:30"),
        ("MONEY", "R$ 1.234,56", "pt", 1234.56),
        ("MONEY", "$1,234.5", "en", 1234.5),
        ("ZIPCODE", "01310-100", "pt", "01310-100"),
        ("ZIPCODE", "90210", "en", "90210"),
        ("LANGUAGE", "Português", "en", "pt"),
        ("LANGUAGE", "english", "pt", "en"),
        ("MOBILE", "+55 (11) 99999-0000", "pt", "+5511999990000"),
        ("PHONE", "555 123 4567", "en", "5551234567"),
        ("MENU", "pao", "pt", "Pão"),
        ("MENU", "1", "pt", "Pizza"),
        ("FILE", {"name": "a.png", "data": "AA=="}, "en", {"name": "a.png", "data": "AA=="}),
    ],
)
def test_answers_that_fit(kind: str, answer: object, language: str, value: object):
    assert validate(kind, answer, ["Pizza", "Pão"], language) == (True, value)


@pytest.mark.parametrize(
    ("kind", "answer"),
    [
        ("EMAIL", "ana@"),
        ("EMAIL", ""),
        ("INTEGER", "4.5"),
        ("INTEGER", "four"),
        ("NUMBER", "x"),
        ("BOOLEAN", "maybe"),
        ("NAME", "Ana"),
        ("NAME", "Ana 2"),
        ("DATE", "someday"),
        ("HOUR", "25:00"),
        ("MONEY", "lots"),
        ("ZIPCODE", "12"),
        ("LANGUAGE", "Klingon"),
        ("MOBILE", "123"),
        ("MENU", "burger"),
        ("FILE", "a.png"),
    ],
)
def test_answers_that_do_not_fit(kind: str, answer: object):
    assert validate(kind, answer, ["Pizza", "Pão"], "en") == (False, None)


def test_reask_messages_in_the_language_with_english_as_fallback():
    assert reask_message("MENU", ["A", "B"], "en") == "Please choose one of: A, B."
    assert reask_message("DATE", [], "pt") == "Por favor, digite uma data, como 31/12/2026."
    assert reask_message("PHONE", [], "de") == "Please type a valid phone number."


def test_options_come_from_texts_lists_and_rows():
    assert options_of(["a", ["b", "c"], [{"name": "d", "x": 1}]]) == ["a", "b", "c", "d"]
