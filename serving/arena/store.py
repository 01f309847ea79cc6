"""Durable arena state in one SQLite file: the rounds shown (models, order, prompt, seed, times) and the votes.

WAL journal with ``synchronous=FULL``: a vote that was answered 200 is on disk, and survives the server (or the
machine) stopping. Readers never block the writer. One vote per round is a ``UNIQUE`` constraint, checked with the
round's expiry inside one ``BEGIN IMMEDIATE`` transaction, so two racing votes cannot both land. Several processes
on one machine may open the same file (the server, a test, ``sqlite3`` for a look); a network file system may not
(SQLite's locks do not hold there).

Voter ids are never stored: the store keeps ``hmac:`` plus the first 32 hex digits of HMAC-SHA256(salt, voter id).
The same voter gets the same value, so a second vote by one voter is still recognised and ``votes.csv`` can still
be grouped by voter, but the value cannot be turned back into the cookie or header that was sent, nor checked
against a guessed id without the salt. The salt is made once (32 random bytes) and kept beside the database in
``<database>.salt`` (mode 0600), never in the database or ``votes.csv``. Keep the salt file with the database: a
new salt makes every voter new (ratings do not use voter ids). A database written before hashing (schema version
1, raw ids) has its ids hashed in place the first time it is opened (schema version 2); ``votes.csv`` files
exported before that keep what they hold.

    store = ArenaStore("outputs/arena/arena.sqlite")
    store.add_round(Round(...)); store.add_vote(round_id, voter_id, "left"); store.votes()
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import hmac
import io
import pathlib
import secrets
import sqlite3
import threading
import time

from models.files import create_once
from serving.arena.ratings import CHOICES

# 2: voter ids hashed (version 1 held them as sent).
SCHEMA_VERSION = 2
VOTER_HASH_PREFIX = "hmac:"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS rounds (
    round_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    prompt TEXT NOT NULL,
    prompt_source TEXT NOT NULL CHECK (prompt_source IN ('file', 'user')),
    seed INTEGER NOT NULL,
    model_left TEXT NOT NULL,
    model_right TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    num_steps INTEGER NOT NULL,
    true_cfg_scale REAL NOT NULL,
    negative_prompt TEXT NOT NULL,
    voter_id TEXT  -- the voter's hash (``voter_hash``), as in votes
);
CREATE TABLE IF NOT EXISTS votes (
    vote_id INTEGER PRIMARY KEY AUTOINCREMENT,
    round_id TEXT NOT NULL UNIQUE REFERENCES rounds (round_id),
    voter_id TEXT NOT NULL,  -- the voter's hash
    choice TEXT NOT NULL CHECK (choice IN ({", ".join(f"'{choice}'" for choice in CHOICES)})),
    voted_at REAL NOT NULL
);
"""

CSV_COLUMNS = (
    "vote_id",
    "voted_at",
    "round_id",
    "round_created_at",
    "voter_id",
    "prompt",
    "prompt_source",
    "seed",
    "model_left",
    "model_right",
    "choice",
    "winner",
)


class StoreError(Exception):
    """A vote the store refuses; the subclasses say why."""


class RoundNotFound(StoreError):
    pass


class RoundExpired(StoreError):
    pass


class AlreadyVoted(StoreError):
    def __init__(self, message: str, *, same_voter: bool):
        super().__init__(message)
        self.same_voter = same_voter


@dataclasses.dataclass(frozen=True)
class Round:
    """A pair of images shown once: which model is on which side, and everything needed to make them again."""

    round_id: str
    created_at: float
    expires_at: float
    prompt: str
    prompt_source: str
    seed: int
    model_left: str
    model_right: str
    width: int
    height: int
    num_steps: int
    true_cfg_scale: float
    negative_prompt: str
    # The voter who drew the round: as sent on the way in, its hash (``ArenaStore.voter_hash``) on the way out.
    voter_id: str | None = None


@dataclasses.dataclass(frozen=True)
class Vote:
    """A stored vote with its round."""

    vote_id: int
    voted_at: float
    # The voter's hash (``ArenaStore.voter_hash``), never the id sent.
    voter_id: str
    choice: str
    round: Round

    @property
    def winner(self) -> str:
        """The preferred model's name, or ``tie`` / ``both_bad``."""
        if self.choice == "left":
            return self.round.model_left
        if self.choice == "right":
            return self.round.model_right
        return self.choice


_ROUND_FIELDS = [field.name for field in dataclasses.fields(Round)]


def salt_path(database: str | pathlib.Path) -> pathlib.Path:
    """Where the voter-hash salt of ``database`` lives: beside it, ``<database>.salt``."""
    database = pathlib.Path(database)
    return database.with_name(database.name + ".salt")


def load_salt(path: pathlib.Path) -> bytes:
    """The salt in ``path``, made (32 random bytes, hex, mode 0600) when missing. Several processes may open one
    database at once: the file appears whole or not at all (written aside, then linked into place), and whoever
    loses the race reads the winner's."""
    create_once(path, secrets.token_hex(32) + "\n", mode=0o600)
    salt = path.read_text().strip()
    if len(salt) < 32:
        raise RuntimeError(f"{path}: the voter-hash salt is missing or too short; restore it from a backup")
    return salt.encode()


class ArenaStore:
    """Rounds and votes in a SQLite file; safe to share between threads of one process."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.salt = load_salt(salt_path(self.path))
        # Autocommit (isolation_level=None): transactions are explicit, BEGIN IMMEDIATE where a read decides a write.
        self.connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self.lock = threading.Lock()
        with self.lock:
            mode = self.connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RuntimeError(f"{self.path}: SQLite refused WAL mode ({mode}); is it on a network file system?")
            self.connection.execute("PRAGMA synchronous=FULL")
            self.connection.execute("PRAGMA foreign_keys=ON")
            version = self.connection.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, SCHEMA_VERSION):
                raise RuntimeError(f"{self.path} has arena schema version {version}; this code reads {SCHEMA_VERSION}")
            self.connection.executescript(_SCHEMA)
            if version == 1:
                self._hash_stored_voters()
            self.connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def voter_hash(self, voter_id: str) -> str:
        """What the store keeps for a voter id: ``hmac:`` and 32 hex digits of HMAC-SHA256(salt, id)."""
        digest = hmac.new(self.salt, voter_id.encode(), hashlib.sha256).hexdigest()
        return VOTER_HASH_PREFIX + digest[:32]

    def _hash_stored_voters(self) -> None:
        """Schema 1 -> 2: hash the raw voter ids in place (a voter id cannot hold ':', a hash starts with 'hmac:'),
        overwriting the freed pages too, in one transaction."""
        self.connection.create_function("voter_hash", 1, self.voter_hash, deterministic=True)
        self.connection.execute("PRAGMA secure_delete=ON")
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            for table in ("rounds", "votes"):
                self.connection.execute(
                    f"UPDATE {table} SET voter_id = voter_hash(voter_id) "
                    "WHERE voter_id IS NOT NULL AND instr(voter_id, ':') = 0"
                )
            self.connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.connection.execute("COMMIT")
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        finally:
            self.connection.execute("PRAGMA secure_delete=OFF")
        # The old values may still sit in the write-ahead log: fold it into the database and empty it.
        self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self.lock:
            self.connection.close()

    def add_round(self, shown: Round) -> None:
        """Store a round; its ``voter_id`` (as sent) is kept as its hash."""
        if shown.voter_id is not None:
            shown = dataclasses.replace(shown, voter_id=self.voter_hash(shown.voter_id))
        values = dataclasses.astuple(shown)
        placeholders = ", ".join("?" for _ in values)
        with self.lock:
            self.connection.execute(f"INSERT INTO rounds ({', '.join(_ROUND_FIELDS)}) VALUES ({placeholders})", values)

    def get_round(self, round_id: str) -> Round:
        with self.lock:
            row = self.connection.execute(
                f"SELECT {', '.join(_ROUND_FIELDS)} FROM rounds WHERE round_id = ?", (round_id,)
            ).fetchone()
        if row is None:
            raise RoundNotFound(f"round {round_id!r} does not exist")
        return Round(*row)

    def add_vote(self, round_id: str, voter_id: str, choice: str, now: float | None = None) -> Vote:
        """Store the round's one vote (``voter_id`` as sent, kept as its hash); ``RoundNotFound``, ``RoundExpired`` or
        ``AlreadyVoted`` when it cannot."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
        now = time.time() if now is None else now
        voter_id = self.voter_hash(voter_id)
        with self.lock:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                vote_id = self._insert_vote(round_id, voter_id, choice, now)
                self.connection.execute("COMMIT")
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
        return Vote(vote_id=vote_id, voted_at=now, voter_id=voter_id, choice=choice, round=self.get_round(round_id))

    def _insert_vote(self, round_id: str, voter_id: str, choice: str, now: float) -> int:
        row = self.connection.execute("SELECT expires_at FROM rounds WHERE round_id = ?", (round_id,)).fetchone()
        if row is None:
            raise RoundNotFound(f"round {round_id!r} does not exist")
        earlier = self.connection.execute("SELECT voter_id FROM votes WHERE round_id = ?", (round_id,)).fetchone()
        if earlier is not None:
            same = earlier[0] == voter_id
            message = "you already voted on this round" if same else "this round already has its vote"
            raise AlreadyVoted(f"{message}; start a new round", same_voter=same)
        if now > row[0]:
            raise RoundExpired(f"round {round_id!r} expired {now - row[0]:.0f} s ago; start a new round")
        cursor = self.connection.execute(
            "INSERT INTO votes (round_id, voter_id, choice, voted_at) VALUES (?, ?, ?, ?)",
            (round_id, voter_id, choice, now),
        )
        return int(cursor.lastrowid)

    def votes(self) -> list[Vote]:
        """Every vote with its round, in the order cast."""
        columns = ", ".join(f"r.{name}" for name in _ROUND_FIELDS)
        with self.lock:
            rows = self.connection.execute(
                f"SELECT v.vote_id, v.voted_at, v.voter_id, v.choice, {columns} "
                "FROM votes v JOIN rounds r ON r.round_id = v.round_id ORDER BY v.vote_id"
            ).fetchall()
        return [Vote(*row[:4], round=Round(*row[4:])) for row in rows]

    def counts(self) -> tuple[int, int, int]:
        """(number of rounds, number of votes, id of the last vote or 0): what a cached leaderboard is keyed by."""
        with self.lock:
            num_rounds = self.connection.execute("SELECT COUNT(*) FROM rounds").fetchone()[0]
            num_votes, last = self.connection.execute(
                "SELECT COUNT(*), COALESCE(MAX(vote_id), 0) FROM votes"
            ).fetchone()
        return num_rounds, num_votes, last


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="milliseconds")


def votes_csv(votes: list[Vote]) -> str:
    """The votes as CSV (header ``CSV_COLUMNS``), times in ISO 8601 UTC."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for vote in votes:
        shown = vote.round
        writer.writerow(
            [
                vote.vote_id,
                _iso(vote.voted_at),
                shown.round_id,
                _iso(shown.created_at),
                vote.voter_id,
                shown.prompt,
                shown.prompt_source,
                shown.seed,
                shown.model_left,
                shown.model_right,
                vote.choice,
                vote.winner,
            ]
        )
    return buffer.getvalue()
