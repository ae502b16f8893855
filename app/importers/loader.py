"""Load importer YAML files from ``INGEST_IMPORTERS_DIR`` at start-up.

They pass the same validation as definitions sent to the API."""

import logging
from pathlib import Path

import yaml
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.db import unit_of_work
from app.core.errors import ValidationFailed
from app.importers.schemas import ImporterDefinition
from app.importers.service import parse_definition, upsert_from_file

log = logging.getLogger(__name__)


class ImporterFileError(Exception):
    pass


def read_definitions(directory: Path) -> list[ImporterDefinition]:
    """Every ``*.yaml``/``*.yml`` file of ``directory``; a bad file names itself and its field."""
    definitions: list[ImporterDefinition] = []
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ImporterFileError(f"{path}: not valid YAML: {exc}") from exc
        try:
            definitions.append(parse_definition(data))
        except ValidationFailed as exc:
            raise ImporterFileError(f"{path}: {exc.message}") from exc
    return definitions


async def load_directory(factory: async_sessionmaker[AsyncSession], directory: Path) -> int:
    definitions = read_definitions(directory)
    async with unit_of_work(factory) as session:
        for definition in definitions:
            await upsert_from_file(session, definition)
    return len(definitions)


async def load_importers_on_startup(app: FastAPI) -> None:
    directory = app.state.settings.importers_dir
    if directory is None:
        return
    count = await load_directory(app.state.session_factory, Path(directory))
    log.info("loaded %d importer(s) from %s", count, directory)
