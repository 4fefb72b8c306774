"Shared pytest fixtures: where the shared real data lives, and small synthetic datasets made on the fly."
import os
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The real Oxford-IIIT Pet subset sits beside the project (never inside it); `FASTAI_MTL_PETS` overrides.
PETS = Path(os.environ.get('FASTAI_MTL_PETS', ROOT.parent/'shared'/'data'/'oxford-iiit-pet-3breeds'))

def have_pets(): return (PETS/'images').is_dir() and (PETS/'annotations').is_dir()

@pytest.fixture(scope='session')
def pets_path():
    if not have_pets(): pytest.skip(f'Oxford-IIIT Pet subset not found at {PETS}')
    return PETS
