"""The OHDSI vocabularies: loading (Athena or CDM export), the Parquet cache, aliases, the warehouse load."""

from pipelines.vocab.vocabulary import Vocabulary, load_vocabulary
from pipelines.vocab.warehouse import write_vocabulary

__all__ = ["Vocabulary", "load_vocabulary", "write_vocabulary"]
