"""Pages and form endpoints. Every conversation is fetched through access.py."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_POST

from chatsite.compiled import Compiled
from conversations import audit
from conversations.access import (
    Access,
    conversation_access,
    get_conversation_for,
    get_message_for,
    get_preset_for,
    is_oversight,
    presets_visible_to,
)
from conversations.chat import selectors, services
from conversations.errors import ServiceError
from conversations.images.attachments import stored_image_in_branch
from conversations.models import Conversation, Message
from conversations.sharing import links
from conversations.web.document_views import document_ids
from conversations.web.forms import ConversationSettingsForm, NewConversationForm, param_fields
from providers.models import ModelConfig


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _error(request: HttpRequest, exc: ServiceError, fallback: str) -> HttpResponse:
    if _wants_json(request):
        response = JsonResponse({"error": {"code": exc.code, "message": exc.message}},
                                status=exc.status)
        if exc.retry_after is not None:
            response["Retry-After"] = str(max(1, int(exc.retry_after)))
        return response
    flash.error(request, exc.message)
    return redirect(fallback)


def _attachment_ids(request: HttpRequest) -> list[uuid.UUID]:
    ids = []
    for raw in request.POST.getlist("attachments")[:20]:
        try:
            ids.append(uuid.UUID(raw))
        except ValueError:
            raise ServiceError("bad_attachment",
                                        _("One of the images is not available.")) from None
    return ids


def _list_context(request: HttpRequest, current: Conversation | None = None) -> dict[str, Any]:
    archived = request.GET.get("archived") == "1"
    query = request.GET.get("q", "").strip()[:200]
    page = selectors.conversation_list_for_user(request.user, query=query, archived=archived,
                                                page=request.GET.get("page", 1))
    # The browser's time zone (nav.js keeps it in a cookie) decides what "today" is.
    zone = selectors.user_zone(request.COOKIES.get("tz"))
    groups = selectors.sidebar_groups(request.user, page, query=query, zone=zone)
    return {"page": page, "groups": groups, "query": query, "archived": archived,
            "current": current, "next_url": request.get_full_path(), "zone_name": str(zone)}


def _models_context(user: Any) -> dict[str, Any]:
    choices = selectors.model_choices(user)
    models = [choice.model for choice in choices]
    groups: dict[str, list[ModelConfig]] = {}
    choice_groups: dict[str, list[selectors.ModelChoice]] = {}
    for choice in choices:
        groups.setdefault(choice.provider, []).append(choice.model)
        choice_groups.setdefault(choice.provider, []).append(choice)
    return {"model_groups": groups, "models": models, "model_choices": choices,
            "model_choice_groups": choice_groups, "param_fields": param_fields(models)}


# A few first prompts for a new chat, by what the chosen model reads.
EXAMPLE_PROMPTS = {
    "text": [
        gettext_lazy("Explain the difference between a llama and an alpaca in three bullet "
                     "points."),
        gettext_lazy("Write a short, friendly email asking a colleague to review my pull "
                     "request."),
        gettext_lazy("Give me a Python function that checks whether a string is a "
                     "palindrome, with tests."),
    ],
    "vision": [
        gettext_lazy("Describe this image in two sentences."),
        gettext_lazy("What text can you read in this picture?"),
        gettext_lazy("List the objects you see in this photo and where they are."),
    ],
}


def _preset_context(request: HttpRequest, slug: str | None) -> dict[str, Any]:
    """The presets the new-chat page offers, and the chosen one (`?preset=` or the posted
    field): Http404 when it is not the user's to use; `preset_error` when its model is not."""
    presets = list(presets_visible_to(request.user).order_by("name")[:50])
    chosen = get_preset_for(request.user, slug) if slug else None
    error = ""
    if chosen is not None and not ModelConfig.objects.visible_to(request.user).filter(
            pk=chosen.model_id).exists():
        error = _("The model of the preset “%(name)s” is not available to you. Ask its "
                  "publisher or an administrator, or pick another model.") % {
                      "name": chosen.name}
    return {"presets": presets, "preset": chosen, "preset_error": error}


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    models = _models_context(request.user)
    default = selectors.default_model_for(request.user, models["model_choices"])
    presets = _preset_context(request, request.GET.get("preset", "")[:80] or None)
    initial: dict[str, Any] = {"model": default.slug if default else None}
    chosen = presets["preset"]
    if chosen is not None and not presets["preset_error"]:
        # Starting from a preset copies its model, system prompt and parameters.
        initial = {"model": chosen.model.slug, "system_prompt": chosen.system_prompt}
        presets["param_values"] = dict(chosen.params or {})
    form = NewConversationForm(user=request.user, initial=initial)
    context = {**_list_context(request), **models, **presets, "form": form,
               "example_prompts": EXAMPLE_PROMPTS}
    return render(request, "conversations/home.html", context)


@login_required
def conversation_new(request: HttpRequest) -> HttpResponse:
    form = NewConversationForm(request.POST or None, user=request.user)
    presets = _preset_context(request, request.POST.get("preset", "")[:80] or None)
    if request.method == "POST" and form.is_valid():
        try:
            conversation = services.conversation_create(
                request.user, model=form.cleaned_data["model"],
                system_prompt=form.cleaned_data["system_prompt"],
                params=form.cleaned_params(), preset=presets["preset"])
            result = services.message_post(request.user, conversation,
                                           text=form.cleaned_data["text"],
                                           client_id=form.cleaned_data["client_id"],
                                           attachment_ids=_attachment_ids(request),
                                           document_ids=document_ids(request))
        except ServiceError as exc:
            form.add_error(None, exc.message)
        else:
            services.remember_default_model(request.user, conversation.model)
            for warning in result.warnings:
                flash.warning(request, warning)
            return redirect("conversation", conversation_id=conversation.pk)
    context = {**_list_context(request), **_models_context(request.user), **presets,
               "form": form, "example_prompts": EXAMPLE_PROMPTS}
    return render(request, "conversations/home.html", context, status=400 if form.errors else 200)


@login_required
@require_GET
def conversation_detail(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = get_conversation_for(request.user, conversation_id, Access.READ)
    access = conversation_access(request.user, conversation)
    if is_oversight(request.user, conversation):
        audit.record("admin.opened_conversation", actor=request.user, request=request,
                     target=f"conversation {conversation.pk}",
                     details={"owner": conversation.owner.get_username()})
    # The composer asks for an image only when the model needs one and none is stored yet.
    needs_image = conversation.model.requires_image and not stored_image_in_branch(
        conversation.pk, conversation.active_leaf_id)
    can_continue = access >= Access.CONTINUE
    context = {**_list_context(request, conversation), "conversation": conversation,
               "thread": selectors.thread(conversation), "access": access,
               "needs_image": needs_image,
               "retention_deadline": selectors.retention_deadline(request.user, conversation),
               "model_choice_groups": (_models_context(request.user)["model_choice_groups"]
                                       if can_continue else {}),
               "can_continue": access >= Access.CONTINUE, "can_manage": access >= Access.MANAGE}
    return render(request, "conversations/conversation.html", context)


@login_required
@require_GET
def thread_fragment(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = get_conversation_for(request.user, conversation_id, Access.READ)
    before = request.GET.get("before")
    try:
        before_seq = int(before) if before else None
    except ValueError:
        raise Http404 from None
    access = conversation_access(request.user, conversation)
    return render(request, "conversations/_thread.html", {
        "conversation": conversation, "thread": selectors.thread(conversation,
                                                                 before_seq=before_seq),
        "can_continue": access >= Access.CONTINUE, "fragment": True})


@login_required
@require_GET
def message_fragment(request: HttpRequest, conversation_id: uuid.UUID,
                     message_id: uuid.UUID) -> HttpResponse:
    conversation = get_conversation_for(request.user, conversation_id, Access.READ)
    message = get_message_for(request.user, conversation, message_id)
    access = conversation_access(request.user, conversation)
    return render(request, "conversations/_message.html", {
        "conversation": conversation, "node": selectors.node_for(message),
        "can_continue": access >= Access.CONTINUE})


def _message_html(request: HttpRequest, conversation: Conversation, message: Message,
                  siblings: list[uuid.UUID] | None = None) -> str:
    return render_to_string("conversations/_message.html", {
        "conversation": conversation, "node": selectors.node_for(message, siblings),
        "can_continue": True}, request=request)


# The answer as it is when the POST replies: read once per message (chatsite/compiled.py).
_ANSWER_NOW = Compiled(lambda pk: Message.objects.select_related("model").filter(pk=pk),
                       pk=Message._meta.get_field("id"))


@login_required
@require_POST
def message_post(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = get_conversation_for(request.user, conversation_id, Access.CONTINUE)
    fallback = reverse("conversation", args=[conversation.pk])
    try:
        client_id = uuid.UUID(request.POST.get("client_id") or str(uuid.uuid4()))
    except ValueError:
        return _error(request, ServiceError("bad_client_id",
                                                     _("The message id is malformed.")), fallback)
    edit_of = None
    if request.POST.get("edit_of"):
        edit_of = get_message_for(request.user, conversation, request.POST["edit_of"])
    try:
        result = services.message_post(request.user, conversation,
                                       text=request.POST.get("text", ""), client_id=client_id,
                                       edit_of=edit_of,
                                       attachment_ids=_attachment_ids(request),
                                       document_ids=document_ids(request))
    except ServiceError as exc:
        return _error(request, exc, fallback)
    if not _wants_json(request):
        for warning in result.warnings:
            flash.warning(request, warning)
    if _wants_json(request):
        # The answer as it is now (the runner may have claimed it), with its model, read once.
        now = _ANSWER_NOW.first(pk=result.assistant_message.pk)
        if now is None:  # the conversation was deleted meanwhile
            raise Http404
        result.assistant_message = now
        return JsonResponse({
            "created": result.created, "replace_thread": edit_of is not None,
            "warnings": result.warnings,
            "user": {"seq": result.user_message.seq, "id": str(result.user_message.pk),
                     "html": _message_html(request, conversation, result.user_message)},
            "assistant": {"seq": result.assistant_message.seq,
                          "id": str(result.assistant_message.pk),
                          # A new answer is the only child of its new prompt.
                          "html": _message_html(request, conversation,
                                                result.assistant_message,
                                                [result.assistant_message.pk]
                                                if result.created else None)},
        }, status=201 if result.created else 200)
    return redirect(fallback)


@login_required
@require_POST
def message_regenerate(request: HttpRequest, conversation_id: uuid.UUID,
                       message_id: uuid.UUID) -> HttpResponse:
    conversation = get_conversation_for(request.user, conversation_id, Access.CONTINUE)
    message = get_message_for(request.user, conversation, message_id)
    fallback = reverse("conversation", args=[conversation.pk])
    try:
        attempt = services.regenerate(request.user, conversation, message)
    except ServiceError as exc:
        return _error(request, exc, fallback)
    if _wants_json(request):
        return JsonResponse({"assistant": {"seq": attempt.seq, "id": str(attempt.pk)}},
                            status=201)
    return redirect(fallback)


@login_required
@require_POST
def message_stop(request: HttpRequest, conversation_id: uuid.UUID,
                 message_id: uuid.UUID) -> HttpResponse:
    conversation = get_conversation_for(request.user, conversation_id, Access.CONTINUE)
    message = get_message_for(request.user, conversation, message_id)
    stopped = services.generation_stop(message)
    if _wants_json(request):
        return JsonResponse({"stopping": stopped})
    return redirect("conversation", conversation_id=conversation.pk)


@login_required
@require_POST
def message_switch(request: HttpRequest, conversation_id: uuid.UUID,
                   message_id: uuid.UUID) -> HttpResponse:
    # The branch shown is the conversation's, for everyone: only those who may continue it
    # may change it (a view-only member or an oversight admin may not).
    conversation = get_conversation_for(request.user, conversation_id, Access.CONTINUE)
    message = get_message_for(request.user, conversation, message_id)
    services.switch_branch(conversation, message)
    if _wants_json(request):
        return JsonResponse({"ok": True})
    return redirect("conversation", conversation_id=conversation.pk)


@login_required
@require_POST
def conversation_model(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """The model for the next answer: whoever may continue the conversation may switch it."""
    conversation = get_conversation_for(request.user, conversation_id, Access.CONTINUE)
    fallback = reverse("conversation", args=[conversation.pk])
    slug = request.POST.get("model", "")
    model = ModelConfig.objects.filter(slug=slug).first() if slug else None
    try:
        result = services.switch_model(request.user, conversation, model)
    except ServiceError as exc:
        return _error(request, exc, fallback)
    message = _("The next answer comes from %(model)s.") % {"model": result.model.display_name}
    if _wants_json(request):
        needs_image = result.model.requires_image and not stored_image_in_branch(
            conversation.pk, conversation.active_leaf_id)
        return JsonResponse({"model": {
            "slug": result.model.slug, "name": result.model.display_name,
            "vision": result.model.vision, "requires_image": needs_image,
            "max_images": result.model.max_images}, "message": message, "notes": result.notes})
    flash.success(request, message)
    for note in result.notes:
        flash.warning(request, note)
    return redirect(fallback)


@login_required
@require_GET
def sidebar_fragment(request: HttpRequest) -> HttpResponse:
    """The sidebar alone, for nav.js to refresh it after a row action without a reload."""
    current = None
    if request.GET.get("current"):
        try:
            current = get_conversation_for(request.user, request.GET["current"], Access.READ)
        except Http404:
            current = None
        if current is not None and is_oversight(request.user, current):
            current = None  # an oversight read is audited on its page, never listed
    context = _list_context(request, current)
    # The row forms come back to the page the sidebar is on, not to this fragment.
    context["next_url"] = (reverse("conversation", args=[current.pk]) if current
                           else reverse("home"))
    return render(request, "conversations/_sidebar.html", context)


@login_required
@require_POST
def conversation_update(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = get_conversation_for(request.user, conversation_id, Access.MANAGE)
    post = request.POST
    def flag(name: str) -> bool | None:
        return post[name] == "1" if name in post else None

    try:
        services.conversation_update(request.user, conversation, title=post.get("title"),
                                     pinned=flag("pinned"), archived=flag("archived"))
    except ServiceError as exc:
        return _error(request, exc, reverse("conversation", args=[conversation.pk]))
    if _wants_json(request):
        return JsonResponse({"title": conversation.display_title, "pinned": conversation.pinned,
                             "archived": conversation.archived})
    target = post.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        target = reverse("conversation", args=[conversation.pk])  # no open redirects
    return redirect(target)


@login_required
def conversation_settings(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = get_conversation_for(request.user, conversation_id, Access.MANAGE)
    form = ConversationSettingsForm(request.POST or None, user=request.user,
                                    conversation=conversation)
    if request.method == "POST" and form.is_valid():
        try:
            team = form.cleaned_data.get("team")
            services.conversation_update(
                request.user, conversation, model=form.cleaned_data["model"],
                system_prompt=form.cleaned_data["system_prompt"], params=form.cleaned_params(),
                team_id=int(team) if team else None)
        except ServiceError as exc:
            form.add_error(None, exc.message)
        else:
            flash.success(request, _("Settings saved."))
            return redirect("conversation", conversation_id=conversation.pk)
    context = {**_list_context(request, conversation), **_models_context(request.user),
               "conversation": conversation, "form": form,
               "shares": links.shares_of(conversation),
               "allow_anonymous_shares": settings.ALLOW_ANONYMOUS_SHARES}
    return render(request, "conversations/settings.html", context,
                  status=400 if form.errors else 200)


@login_required
def conversation_delete(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = get_conversation_for(request.user, conversation_id, Access.MANAGE)
    if request.method == "POST":
        services.conversation_delete(conversation)
        if _wants_json(request):
            return JsonResponse({"deleted": True})
        flash.success(request, _("Conversation deleted."))
        return redirect("home")
    return render(request, "conversations/delete.html",
                  {**_list_context(request, conversation), "conversation": conversation})
