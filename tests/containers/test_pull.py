"""Images: pull policies, credentials, progress and the typed errors, against a loopback registry."""

from __future__ import annotations

import asyncio
import traceback

import pytest
from structlog.testing import capture_logs

from ufdl_node.containers.engine import (
    ContainerConfigError,
    ContainerEngine,
    ImageNotFound,
    ImageNotPresent,
    ImagePullError,
    PullProgress,
    RegistryAuth,
    RegistryAuthError,
)

from .conftest import Registry, delete_image


def _everything_about(exc: BaseException) -> str:
    """The error's message, repr and formatted traceback, chained causes included."""
    return f"{exc}\n{exc!r}\n{''.join(traceback.format_exception(exc))}"


async def test_pull_always_with_good_credentials_fetches_the_image(
        engine: ContainerEngine, registry: Registry) -> None:
    """Policy "always" pulls from the registry with its credentials and reports progress to 1.0."""
    assert not await engine.has_image(registry.image)
    updates: list[PullProgress] = []

    await engine.ensure_image(registry.image, auth=registry.auth, policy="always",
                              on_progress=updates.append)

    assert await engine.has_image(registry.image)
    fractions = [u.fraction for u in updates if u.fraction is not None]
    assert len(fractions) >= 2, "the pulled layer's download reported no size"
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(u.status and "\n" not in u.status for u in updates)
    await delete_image(registry.image)


async def test_refused_credentials_raise_the_auth_error_without_the_password(
        engine: ContainerEngine, registry: Registry) -> None:
    """Credentials the registry refuses give RegistryAuthError; the password is in no log line or error."""
    wrong = RegistryAuth(registry.username, "not-the-password-" + registry.password[:8])

    with capture_logs() as entries, pytest.raises(RegistryAuthError) as caught:
        await engine.ensure_image(registry.image, auth=wrong, policy="always")

    assert caught.value.ref == registry.image
    assert "refused the credentials" in str(caught.value)
    assert wrong.password not in _everything_about(caught.value)
    assert entries and wrong.password not in repr(entries)
    assert wrong.password not in repr(wrong)


async def test_missing_image_in_the_registry_raises_not_found(
        engine: ContainerEngine, registry: Registry) -> None:
    """An image the registry does not have gives ImageNotFound naming it."""
    ref = f"{registry.host}/ufdl-test/no-such-image:1.0"

    with pytest.raises(ImageNotFound) as caught:
        await engine.ensure_image(ref, auth=registry.auth)

    assert caught.value.ref == ref and ref in str(caught.value)


async def test_private_image_without_credentials_is_a_pull_error(
        engine: ContainerEngine, registry: Registry) -> None:
    """A registry that wants credentials, given none, is a plain pull error, not an auth refusal."""
    with pytest.raises(ImagePullError) as caught:
        await engine.ensure_image(registry.image, policy="always")

    assert not isinstance(caught.value, RegistryAuthError)
    assert "needs registry credentials" in str(caught.value)


async def test_policy_never_with_a_missing_image_says_so(engine: ContainerEngine) -> None:
    """Policy "never" and an image not on the node: ImageNotPresent naming image and policy."""
    with pytest.raises(ImageNotPresent, match=r"ufdl-node-test/absent:1 .*'never'"):
        await engine.ensure_image("ufdl-node-test/absent:1", policy="never")


async def test_policy_if_missing_does_not_pull_a_present_image(engine: ContainerEngine) -> None:
    """Policy "if-missing" with the image present reports no pull at all."""
    updates: list[PullProgress] = []

    await engine.ensure_image("ufdl-node-test/busybox:latest", on_progress=updates.append)

    assert updates == []


async def test_unknown_policy_is_a_config_error(engine: ContainerEngine) -> None:
    """A pull policy that is not one of the three is refused with the allowed values."""
    with pytest.raises(ContainerConfigError, match="if-missing, always, never"):
        await engine.ensure_image("ufdl-node-test/busybox:latest", policy="sometimes")


async def test_two_slots_asking_for_a_missing_image_pull_it_once(
        engine: ContainerEngine, registry: Registry) -> None:
    """Concurrent if-missing requests for one image make one pull; the other finds it present."""
    assert not await engine.has_image(registry.image)

    with capture_logs() as entries:
        await asyncio.gather(*(engine.ensure_image(registry.image, auth=registry.auth) for _ in range(2)))

    assert [e["event"] for e in entries].count("pulling image") == 1
    await delete_image(registry.image)
