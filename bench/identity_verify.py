"""Downstream verify cost per hop: garrison's passport against re-verifying the original JWT.

Behind the edge, every service must know who a request acts for. With garrison, the edge verifies
the client's credential once and mints a passport; each service then verifies the passport
(``PassportCodec.verify``: an HMAC-SHA256 or Ed25519 tag over a small msgpack body). Without it,
each service re-verifies the client's JWT: an ES256 or RS256 signature, JSON, and the claims.

Contenders, all on the same identity (a 13-claim access token: iss, sub, aud, exp, iat, nbf, jti,
azp, scope, roles, org_id, amr, auth_time; the passport made from it by ``JwtResolver``, with
user, tenant, roles and scopes):

* garrison — ``PassportCodec.verify`` with HS256 and with Ed25519 (the services' keyrings are
  verify-only: ``Keyring.verify_only()``, Ed25519 public keys); and through
  :class:`~garrison.identity.PassportVerifier` as services use it: the token as the ASGI header
  bytes, a *first arrival* (a miss: tokens cycled through a pool larger than the verifier's
  4096 entries, so every call verifies, inserts and evicts) and a *repeat arrival* (a hit: the
  same passport again, as a fan-out or a retry brings it);
* PyJWT ``jwt.decode(token, key, algorithms=[alg], audience=..., issuer=...,
  options={"require": ["exp", "iss", "aud"]})`` and joserfc ``jwt.decode(token, key,
  algorithms=[alg])`` + ``JWTClaimsRegistry(iss, aud, exp essential).validate(claims)``, each with
  its key object loaded once (their cheapest form: the service knows its one issuer), for an
  ES256 (P-256) and an RS256 (2048-bit) token;
* for reference, garrison's own ``JwtResolver.verify`` (the edge's JWT check) on the same tokens.

A chain of N services: the edge mints once, each hop verifies once (a different service each
time, so a PassportVerifier miss); the JWT alternative re-verifies at each hop. The edge's own
JWT verification is the same in both designs and left out. Chain totals are paired per round:
``mint + N x verify`` against ``N x re-verify``.

Every contender is a sync call run in batches of about the same duration; each round runs every
contender once in an order shuffled per round, so load from elsewhere on the machine hits them
alike. Values are the median over rounds of process CPU time per call (``time.process_time``),
including ~0.05 us of loop and call overhead (the bare loop is in the notes). Passports are
minted with a 1 h ttl so that the pools outlive the run (the default is 60 s; the ttl does not
change the work).
"""

from __future__ import annotations

import gc
import itertools
import random
import secrets
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jwt as jjwt
from joserfc.jwk import ECKey, RSAKey

from garrison.identity import (
    ClaimMapping,
    Credential,
    CredentialKind,
    JwtIssuerConfig,
    JwtResolver,
    Keyring,
    PassportCodec,
    PassportVerifier,
    Resolution,
)
from garrison.identity._jwks import StaticKeys
from garrison.identity._jws import VerificationKey
from garrison.identity._jwt import JwtIssuer

from ._harness import Row, median, note, percentile, progress

PILLAR = "identity"

GOAL_RATIO = 20.0
"""Issue 3: a passport hop is at least 20x cheaper than re-verifying the JWT."""
CHAINS = (1, 5, 20)
ISSUER = "https://login.example.com/"
AUDIENCE = "fleet-api"
MISS_POOL = 6000
"""Distinct passports cycled for the miss rows: more than PassportVerifier's 4096 entries, so
each one has been evicted before it comes round again (checked: no hit)."""

GARRISON = "garrison"
PEERS = ("PyJWT ES256", "PyJWT RS256", "joserfc ES256", "joserfc RS256")


@dataclass(frozen=True)
class Plan:
    """How long to run: rounds, and the target duration of one batch."""

    rounds: int
    batch_s: float
    calibrate_calls: int


FULL = Plan(rounds=21, batch_s=0.060, calibrate_calls=200)
QUICK = Plan(rounds=5, batch_s=0.008, calibrate_calls=40)


@dataclass
class Variant:
    """One contender: a sync call, and its per-call costs per round."""

    name: str
    call: Callable[[], object]
    n: int = 0
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)


# -- the identity --------------------------------------------------------------------------------


def access_claims(now: float, subject: str = "user-1234", issuer: str = ISSUER) -> dict[str, Any]:
    """A realistic access token's claims (Auth0 / Entra ID style), valid for an hour."""
    t = int(now)
    return {
        "iss": issuer,
        "sub": subject,
        "aud": [AUDIENCE, f"{issuer}userinfo"],
        "exp": t + 3600,
        "iat": t,
        "nbf": t,
        "jti": secrets.token_urlsafe(16),
        "azp": "fleet-console",
        "scope": "openid fleet:read fleet:write sites:read",
        "roles": ["operator", "site-admin"],
        "org_id": "org_7Hq2kLm9",
        "amr": ["pwd", "otp"],
        "auth_time": t - 600,
    }


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (a resolver with its keys in memory) to its end."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the coroutine suspended; it needs an event loop")


def issuer_config(issuer: str, algorithms: list[Any]) -> JwtIssuerConfig:
    """An issuer whose keys the caller supplies (``jwks_file`` is never read here)."""
    return JwtIssuerConfig(
        issuer=issuer,
        audiences=(AUDIENCE,),
        algorithms=algorithms,
        jwks_file="unused.json",
        claims=ClaimMapping(tenant="org_id"),
    )


@dataclass
class Setup:
    """Keys, tokens and the contenders' callables."""

    es_token: str
    rs_token: str
    resolution: Resolution
    codecs: dict[str, PassportCodec]
    """Minting codecs by algorithm."""
    verifiers: dict[str, PassportCodec]
    """Verify-only codecs by algorithm, as a service holds them."""
    jwt_resolver: JwtResolver
    variants: list[Variant]
    miss_verifiers: dict[str, PassportVerifier]
    passport_chars: dict[str, int]


def build() -> Setup:
    """Keys, one JWT per algorithm, the passport made from it, and every contender."""
    now = time.time()
    es_key = ec.generate_private_key(ec.SECP256R1())
    rs_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = access_claims(now)
    es_token = pyjwt.encode(claims, es_key, algorithm="ES256", headers={"kid": "es-2025-06"})
    rs_token = pyjwt.encode(claims, rs_key, algorithm="RS256", headers={"kid": "rs-2025-06"})
    es_pub, rs_pub = es_key.public_key(), rs_key.public_key()

    # garrison's JWT check at the edge: it also makes the passport's content
    resolver = JwtResolver(
        [
            JwtIssuer(
                issuer_config(ISSUER, ["ES256", "RS256"]),
                StaticKeys(
                    [
                        VerificationKey(es_pub, kid="es-2025-06", alg="ES256"),
                        VerificationKey(rs_pub, kid="rs-2025-06", alg="RS256"),
                    ]
                ),
            )
        ]
    )
    cred = Credential(kind=CredentialKind.JWT, value=es_token, resolver="jwt")
    resolution: Resolution = drive(resolver.resolve(cred))

    edge_rings = {
        "HS256": Keyring.hmac({"hs-2025-06": secrets.token_bytes(32)}, active="hs-2025-06"),
        "Ed25519": Keyring.ed25519(
            private_keys={"ed-2025-06": Ed25519PrivateKey.generate()}, active="ed-2025-06"
        ),
    }
    codecs = {alg: PassportCodec(ring, ttl=3600) for alg, ring in edge_rings.items()}
    verifiers = {
        alg: PassportCodec(ring.verify_only(), ttl=3600) for alg, ring in edge_rings.items()
    }
    tokens = {alg: codecs[alg].mint_for(resolution)[1].encode() for alg in codecs}

    variants: list[Variant] = [Variant("bare", lambda: None)]
    miss_verifiers: dict[str, PassportVerifier] = {}
    for alg in codecs:
        codec, verifier = codecs[alg], verifiers[alg]
        variants.append(Variant(f"codec {alg}", partial(verifier.verify, tokens[alg])))
        pool = [codec.mint_for(resolution)[1].encode() for _ in range(MISS_POOL)]
        miss = PassportVerifier(verifier)
        miss_verifiers[alg] = miss
        variants.append(Variant(f"miss {alg}", _cycling(miss.verify, pool)))
        hit = PassportVerifier(verifier)
        hit.verify(tokens[alg])
        variants.append(Variant(f"hit {alg}", partial(hit.verify, tokens[alg])))
        variants.append(Variant(f"mint {alg}", partial(codec.mint_for, resolution)))

    def pyjwt_call(token: str, key: Any, alg: str) -> Callable[[], object]:
        return partial(
            pyjwt.decode,
            token,
            key,
            algorithms=[alg],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iss", "aud"]},
        )

    registry = jjwt.JWTClaimsRegistry(
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": AUDIENCE},
        exp={"essential": True},
    )

    def joserfc_call(token: str, key: Any, alg: str) -> Callable[[], object]:
        def call() -> object:
            decoded = jjwt.decode(token, key, algorithms=[alg])
            registry.validate(decoded.claims)
            return decoded

        return call

    es_jkey = ECKey.import_key(es_pub)
    rs_jkey = RSAKey.import_key(rs_pub)
    variants += [
        Variant("PyJWT ES256", pyjwt_call(es_token, es_pub, "ES256")),
        Variant("PyJWT RS256", pyjwt_call(rs_token, rs_pub, "RS256")),
        Variant("joserfc ES256", joserfc_call(es_token, es_jkey, "ES256")),
        Variant("joserfc RS256", joserfc_call(rs_token, rs_jkey, "RS256")),
        Variant("garrison JWT ES256", lambda: drive(resolver.verify(es_token))),
        Variant("garrison JWT RS256", lambda: drive(resolver.verify(rs_token))),
    ]
    for v in variants:  # every contender works before it is timed
        v.call()
    return Setup(
        es_token=es_token,
        rs_token=rs_token,
        resolution=resolution,
        codecs=codecs,
        verifiers=verifiers,
        jwt_resolver=resolver,
        variants=variants,
        miss_verifiers=miss_verifiers,
        passport_chars={alg: len(t) for alg, t in tokens.items()},
    )


def _cycling(fn: Callable[[bytes], object], pool: list[bytes]) -> Callable[[], object]:
    it: Iterator[bytes] = itertools.cycle(pool)
    return lambda: fn(next(it))


# -- measuring -----------------------------------------------------------------------------------


def timed(v: Variant, n: int) -> tuple[float, float]:
    """``n`` calls of ``v`` in a loop: (wall us, CPU us) per call."""
    call = v.call
    gc.collect()
    clock, cpu_clock = time.perf_counter_ns, time.process_time_ns
    c0, t0 = cpu_clock(), clock()
    for _ in range(n):
        call()
    t1, c1 = clock(), cpu_clock()
    return (t1 - t0) / n / 1e3, (c1 - c0) / n / 1e3


def calibrate(variants: list[Variant], plan: Plan) -> None:
    """Size each variant's batch to last about ``plan.batch_s``."""
    for v in variants:
        timed(v, plan.calibrate_calls)  # warm up
        per_call, _ = timed(v, plan.calibrate_calls)
        v.n = max(plan.calibrate_calls, int(plan.batch_s / max(per_call, 0.01) * 1e6))


def measure(variants: list[Variant], plan: Plan, label: str) -> None:
    """Every variant once per round, in an order shuffled per round."""
    rng = random.Random(3)
    with progress(label, plan.rounds) as advance:
        for r in range(plan.rounds):
            order = variants[:]
            rng.shuffle(order)
            for v in order:
                w, c = timed(v, v.n)
                v.wall.append(w)
                v.cpu.append(c)
            advance(f"round {r + 1}")


# -- reporting -----------------------------------------------------------------------------------


def _goal_note(g: float, peers: dict[str, float]) -> str:
    factors = {k: c / g for k, c in peers.items()}
    worst = min(factors, key=lambda k: factors[k])
    ok = "met" if factors[worst] >= GOAL_RATIO else "NOT met"
    return (
        f"goal >= {GOAL_RATIO:.0f}x cheaper than every re-verification: {ok} "
        f"(x{factors[worst]:.1f} vs {worst}); cheaper by "
        + ", ".join(f"{k} x{f:.1f}" for k, f in factors.items())
    )


def run(quick: bool) -> list[Row]:
    """Build, calibrate, measure in rounds, and make the table."""
    plan = QUICK if quick else FULL
    s = build()
    by = {v.name: v for v in s.variants}
    calibrate(s.variants, plan)
    measure(s.variants, plan, "identity verify")
    for alg, miss in s.miss_verifiers.items():
        if miss.hits:
            raise RuntimeError(f"the {alg} miss pool produced {miss.hits} cache hits")

    def cpu(name: str) -> float:
        return median(by[name].cpu)

    peers = {p: cpu(p) for p in PEERS}
    rows: list[Row] = []

    def hop_row(metric: str, name: str, extra: str = "") -> Row:
        g = cpu(name)
        lo, hi = (percentile(by[name].cpu, q) for q in (0.25, 0.75))
        notes = f"{_goal_note(g, peers)}; rounds p25-p75 {lo:.2f}-{hi:.2f}"
        return Row(
            metric,
            "µs",
            g,
            peers=dict(peers),
            better="lower",
            notes=notes + (f"; {extra}" if extra else ""),
        )

    rows.append(
        hop_row(
            "per hop · HS256 passport, PassportCodec.verify",
            "codec HS256",
            f"{s.passport_chars['HS256']}-character passport",
        )
    )
    rows.append(
        hop_row(
            "per hop · Ed25519 passport, PassportCodec.verify",
            "codec Ed25519",
            f"{s.passport_chars['Ed25519']}-character passport",
        )
    )
    rows.append(
        hop_row(
            "per hop · HS256 via PassportVerifier, first arrival (miss)",
            "miss HS256",
            "as each service of a chain sees a passport: verify + cache insert + eviction",
        )
    )
    rows.append(
        hop_row(
            "per hop · Ed25519 via PassportVerifier, first arrival (miss)",
            "miss Ed25519",
        )
    )
    rows.append(
        hop_row(
            "per hop · via PassportVerifier, repeat arrival (hit)",
            "hit HS256",
            f"HS256; Ed25519 {cpu('hit Ed25519'):.2f} µs (same path: the algorithm is not "
            "involved); fan-out or retry to a service that has seen the passport",
        )
    )
    rows.append(
        Row(
            "mint at the edge · HS256, PassportCodec.mint_for",
            "µs",
            cpu("mint HS256"),
            better=None,
            notes=f"Ed25519 {cpu('mint Ed25519'):.2f} µs; once per request, at the edge",
        )
    )
    rows.append(
        Row(
            "reference · garrison JwtResolver.verify, ES256",
            "µs",
            cpu("garrison JWT ES256"),
            better=None,
            notes=f"RS256 {cpu('garrison JWT RS256'):.2f} µs; the edge's own JWT check "
            "(signature, strict JSON, claims), not a per-hop cost",
        )
    )

    for alg in ("HS256", "Ed25519"):
        mint, miss, codec = by[f"mint {alg}"], by[f"miss {alg}"], by[f"codec {alg}"]
        for n in CHAINS:
            g = median([m + n * h for m, h in zip(mint.cpu, miss.cpu, strict=True)])
            codec_only = median([m + n * h for m, h in zip(mint.cpu, codec.cpu, strict=True)])
            chain_peers = {p: median([n * c for c in by[p].cpu]) for p in PEERS}
            rows.append(
                Row(
                    f"chain of {n} · {alg} passport: mint + {n} x verify",
                    "µs",
                    g,
                    peers=chain_peers,
                    better="lower",
                    notes=f"{_goal_note(g, chain_peers)}; each hop a PassportVerifier miss; "
                    f"with PassportCodec.verify {codec_only:.1f} µs",
                )
            )

    hs_factor = min(peers.values()) / cpu("codec HS256")
    hs_miss_factor = min(peers.values()) / cpu("miss HS256")
    chain20 = (
        min(peers.values())
        * 20
        / median(
            [m + 20 * h for m, h in zip(by["mint HS256"].cpu, by["miss HS256"].cpu, strict=True)]
        )
    )
    note(
        "verdict",
        f"HS256 passport hop {cpu('codec HS256'):.1f} µs (codec) / {cpu('miss HS256'):.1f} µs "
        f"(PassportVerifier miss) vs cheapest JWT re-verification {min(peers.values()):.1f} µs "
        f"({min(peers, key=lambda k: peers[k])}): x{hs_factor:.1f} / x{hs_miss_factor:.1f}; "
        f"chain of 20 x{chain20:.1f}; Ed25519 hop {cpu('codec Ed25519'):.1f} µs (costlier than "
        f"the JWT it replaces); a repeat arrival (hit) {cpu('hit HS256'):.2f} µs. Goal >= "
        f"{GOAL_RATIO:.0f}x: see each row",
    )
    note(
        "setup",
        f"{plan.rounds} rounds, batches of ~{plan.batch_s * 1e3:.0f} ms per contender, order "
        "shuffled per round; value = median over rounds of process CPU µs per call; bare loop "
        f"{cpu('bare') * 1e3:.0f} ns per call (included). Tokens: ES256 P-256 "
        f"{len(s.es_token)} chars, RS256 2048-bit {len(s.rs_token)} chars, 13 claims. Passport "
        "tokens given as bytes (as the ASGI header arrives); services verify with verify-only "
        "keyrings; ratio = garrison ÷ the cheapest peer (lower is better: 0.05 = 20x cheaper)",
    )
    note(
        "forms",
        "PyJWT jwt.decode(token, key, algorithms, audience, issuer, options require exp/iss/aud); "
        "joserfc jwt.decode(token, key, algorithms) + JWTClaimsRegistry(iss, aud, exp "
        "essential).validate; key objects loaded once (cheapest form, one issuer). Chain: the "
        "edge's own JWT verification is common to both designs and not counted",
    )
    note(
        "versions",
        ", ".join(f"{p} {version(p)}" for p in ("PyJWT", "joserfc", "cryptography", "msgspec")),
    )
    return rows
