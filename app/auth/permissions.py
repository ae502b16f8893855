"""Abilities and roles of SPEC §7."""

VIEW = "ingest:view"
CREATE = "ingest:create"
REVIEW = "ingest:review"
ADMIN = "ingest:admin"
ABILITIES = (VIEW, CREATE, REVIEW, ADMIN)

ROLE_ABILITIES: dict[str, frozenset[str]] = {
    "admin": frozenset(ABILITIES),
    "curator": frozenset({VIEW, REVIEW}),
    "service": frozenset({VIEW, CREATE}),
    "viewer": frozenset({VIEW}),
}
ROLES = tuple(ROLE_ABILITIES)


def expand(abilities: frozenset[str] | set[str] | list[str]) -> frozenset[str]:
    """``ingest:admin`` implies every ability."""
    found = frozenset(abilities)
    return frozenset(ABILITIES) if ADMIN in found else found & frozenset(ABILITIES)


def effective_abilities(token_abilities: list[str], role: str) -> frozenset[str]:
    """A token can do what it was granted *and* what its user's role allows."""
    return expand(token_abilities) & ROLE_ABILITIES.get(role, frozenset())
