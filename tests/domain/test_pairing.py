"""Codes and button payloads: made, checked, tamper-proof. Pure."""

from __future__ import annotations

import secrets
import string

import pytest

from authz_service.domain.errors import InvalidArgument
from authz_service.domain.model import ApprovalAction
from authz_service.domain.pairing import (
    CODE_ALPHABET,
    CODE_LENGTH,
    Keyring,
    new_approval_id,
    new_code_seed,
    normalize_code,
)

KEY = Keyring(b"k" * 32)


def test_alphabet_has_no_ambiguous_characters() -> None:
    assert not set("0O1IL") & set(CODE_ALPHABET)
    assert len(set(CODE_ALPHABET)) == len(CODE_ALPHABET) == 31


def test_codes_are_stable_per_seed_and_differ_across_seeds() -> None:
    seed = new_code_seed()
    code = KEY.code_from_seed(seed)
    assert len(code) == CODE_LENGTH and set(code) <= set(CODE_ALPHABET)
    assert KEY.code_from_seed(seed) == code
    assert Keyring(b"x" * 32).code_from_seed(seed) != code  # the server key matters
    codes = {KEY.code_from_seed(new_code_seed()) for _ in range(2000)}
    assert len(codes) == 2000


def test_code_characters_are_roughly_uniform() -> None:
    counts = dict.fromkeys(CODE_ALPHABET, 0)
    for _ in range(3000):
        for c in KEY.code_from_seed(new_code_seed()):
            counts[c] += 1
    expected = 3000 * CODE_LENGTH / len(CODE_ALPHABET)
    assert all(0.75 * expected < n < 1.25 * expected for n in counts.values()), counts


def test_code_hash_is_bound_to_tenant_and_channel() -> None:
    h = KEY.code_hash("t", "telegram-bot", "ABCDEFGH")
    assert h != KEY.code_hash("t", "slack-bot", "ABCDEFGH")
    assert h != KEY.code_hash("u", "telegram-bot", "ABCDEFGH")
    assert h == KEY.code_hash("t", "telegram-bot", "ABCDEFGH")


def test_normalize_code_accepts_what_people_type() -> None:
    assert normalize_code(" abcd-efgh ") == "ABCDEFGH"
    for bad in ("", "ABCDEFG", "ABCDEFGHJ", "ABCDEFG0", "ABCDEFGI", "ÄBCDEFGH"):
        with pytest.raises(InvalidArgument):
            normalize_code(bad)


def test_callback_payload_fits_telegram_and_round_trips() -> None:
    approval = new_approval_id()
    for action in ApprovalAction:
        payload = KEY.callback_payload("acme", approval, action)
        assert len(payload.encode()) <= 64
        assert KEY.open_callback("acme", payload) == (approval, action)


def test_every_single_character_tamper_is_refused() -> None:
    payload = KEY.callback_payload("acme", new_approval_id(), ApprovalAction.APPROVE)
    alphabet = string.ascii_letters + string.digits + "-_"
    for i, original in enumerate(payload):
        for replacement in {alphabet[(alphabet.find(original) + 1) % len(alphabet)], "~"}:
            forged = payload[:i] + replacement + payload[i + 1 :]
            with pytest.raises(InvalidArgument):
                KEY.open_callback("acme", forged)


def test_truncated_extended_and_foreign_payloads_are_refused() -> None:
    approval = new_approval_id()
    payload = KEY.callback_payload("acme", approval, ApprovalAction.DENY)
    for forged in (payload[:-1], payload[:8], payload + "A", "", "az1", secrets.token_urlsafe(36)[:48]):
        with pytest.raises(InvalidArgument):
            KEY.open_callback("acme", forged)
    with pytest.raises(InvalidArgument):  # another tenant's button
        KEY.open_callback("other", payload)
    with pytest.raises(InvalidArgument):  # another deployment's key
        Keyring(b"z" * 32).open_callback("acme", payload)
    # Changing only the action letter (deny -> approve) breaks the MAC.
    with pytest.raises(InvalidArgument):
        KEY.open_callback("acme", payload[:3] + "a" + payload[4:])


def test_keyring_refuses_short_secrets() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Keyring(b"short")
