"""/manage/retention/: the retention policy for superusers (site period, team rules, legal
holds, a preview of the next run and a "run now"). Anyone else gets the 404 of a page that
does not exist."""

from __future__ import annotations

import re
import uuid
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods

from conversations.errors import ServiceError
from conversations.models import AuditEvent, Conversation, TeamSettings
from conversations.retention import services
from conversations.retention.policy import MAX_DAYS, WARN_DAYS
from conversations.retention.run import RETENTION_APPLIED, apply_retention

HELD_SHOWN = 200
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


class SiteForm(forms.Form):
    retention_days = forms.IntegerField(
        label=gettext_lazy("Keep conversations for (days)"), required=False, min_value=1,
        max_value=MAX_DAYS,
        help_text=gettext_lazy("Counted from a conversation's last activity. Empty: keep "
                               "forever."),
        widget=forms.NumberInput(attrs={"placeholder": gettext_lazy("forever")}))


class TeamForm(forms.Form):
    MODES = [("site", gettext_lazy("Follow the site")),
             ("days", gettext_lazy("Shorter period")),
             ("keep", gettext_lazy("Keep"))]
    team = forms.IntegerField(widget=forms.HiddenInput)
    mode = forms.ChoiceField(label=gettext_lazy("Rule"), choices=MODES)
    days = forms.IntegerField(label=gettext_lazy("Days"), required=False, min_value=1,
                              max_value=MAX_DAYS)
    legal_hold = forms.BooleanField(label=gettext_lazy("Legal hold"), required=False)


class HoldForm(forms.Form):
    conversation = forms.CharField(
        label=gettext_lazy("Conversation link or id"), max_length=500,
        widget=forms.TextInput(attrs={"autocomplete": "off",
                                      "placeholder": "https://…/c/…/"}))

    def clean_conversation(self) -> Conversation:
        match = _UUID.search(self.cleaned_data["conversation"])
        conversation = (Conversation.objects.select_related("owner")
                        .filter(pk=uuid.UUID(match.group(0))).first() if match else None)
        if conversation is None:
            raise forms.ValidationError(_("No conversation has this link or id."))
        return conversation


def _superuser_only(request: HttpRequest) -> None:
    if not request.user.is_superuser:
        raise Http404


def _team_rows(refused: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every team with its rule; a refused row shows what was entered, with its error."""
    teams = list(Group.objects.order_by("name"))
    rules = {s.team_id: s for s in TeamSettings.objects.filter(team__in=teams)}
    rows = []
    for team in teams:
        rule = rules.get(team.pk)
        mode = "site"
        if rule is not None and rule.retention_keep:
            mode = "keep"
        elif rule is not None and rule.retention_days:
            mode = "days"
        row = {"team": team, "mode": mode, "days": rule.retention_days if rule else None,
               "legal_hold": bool(rule and rule.legal_hold)}
        if refused and refused.get("team") == str(team.pk):
            row.update({"mode": refused["mode"], "days": refused["days"],
                        "legal_hold": refused["legal_hold"]})
        rows.append(row)
    return rows


@login_required
@require_http_methods(["GET", "POST"])
def retention_page(request: HttpRequest) -> HttpResponse:
    _superuser_only(request)
    action = request.POST.get("action", "") if request.method == "POST" else ""
    site_form = SiteForm(request.POST if action == "site" else None,
                         initial={"retention_days": services.site_days()})
    hold_form = HoldForm(request.POST if action == "hold" else None)
    team_form = TeamForm(request.POST if action == "team" else None)
    team_error: dict[str, Any] = {}
    page_error = ""
    if request.method == "POST":
        try:
            done = _post(request, action, site_form, hold_form, team_form, team_error)
        except ServiceError as exc:
            if action == "site":
                site_form.add_error("retention_days", exc.message)
            elif action == "team":
                team_error = {"team": request.POST.get("team"), "message": exc.message}
            else:
                page_error = exc.message
            done = False
        if done:
            return redirect("manage_retention")
    preview = apply_retention(dry_run=True)
    context = {
        "site_form": site_form, "hold_form": hold_form,
        "site_days": services.site_days(),
        "teams": _team_rows(_entered(request) if team_error else None),
        "team_error": team_error, "page_error": page_error,
        "team_modes": TeamForm.MODES,
        "held": list(Conversation.objects.filter(legal_hold=True)
                     .select_related("owner", "team").order_by("-updated_at")[:HELD_SHOWN]),
        "preview": preview, "warn_days": WARN_DAYS, "max_days": MAX_DAYS,
        "interval_minutes": max(1, round(settings.RETENTION_INTERVAL_SECONDS / 60)),
        "last_run": AuditEvent.objects.filter(action=RETENTION_APPLIED).first(),
    }
    invalid = request.method == "POST"
    return render(request, "manage/retention.html", context, status=400 if invalid else 200)


def _post(request: HttpRequest, action: str, site_form: SiteForm, hold_form: HoldForm,
          team_form: TeamForm, team_error: dict[str, Any]) -> bool:
    """Apply one form; True when it worked (then the page redirects)."""
    user = request.user
    if action == "site":
        if not site_form.is_valid():
            return False
        days = site_form.cleaned_data["retention_days"]
        services.set_site_period(days, actor=user, request=request)
        flash.success(request, _("Conversations are now kept for %(days)d days after their "
                                 "last activity.") % {"days": days} if days else
                      _("Conversations are now kept forever."))
        return True
    if action == "team":
        team = Group.objects.filter(pk=request.POST.get("team") or 0).first() if (
            request.POST.get("team", "").isdigit()) else None
        if team is None or not team_form.is_valid():
            errors = [str(e) for errs in team_form.errors.values() for e in errs]
            team_error.update({"team": request.POST.get("team"),
                               "message": " ".join(errors) or _("No such team.")})
            return False
        data = team_form.cleaned_data
        services.set_team_rule(team, mode=data["mode"], days=data["days"],
                               legal_hold=data["legal_hold"], actor=user, request=request)
        flash.success(request, _("The rule of team “%(team)s” is saved.") % {"team": team.name})
        return True
    if action == "hold":
        if not hold_form.is_valid():
            return False
        conversation = hold_form.cleaned_data["conversation"]
        services.set_legal_hold([conversation], True, actor=user, request=request)
        flash.success(request, _("“%(title)s” is under legal hold: it is never deleted.")
                      % {"title": conversation.display_title})
        return True
    if action == "unhold":
        conversation_id = _uuid_or_none(request.POST.get("conversation", ""))
        conversation = (Conversation.objects.select_related("owner")
                        .filter(pk=conversation_id).first() if conversation_id else None)
        if conversation is None:
            raise Http404
        services.set_legal_hold([conversation], False, actor=user, request=request)
        flash.success(request, _("The legal hold on “%(title)s” is lifted.")
                      % {"title": conversation.display_title})
        return True
    if action == "run":
        if request.POST.get("confirm") != "1":
            raise ServiceError("unconfirmed", _("Tick the box to confirm the deletion."))
        report = apply_retention(actor=user, request=request, always_audit=True)
        flash.success(request, _("Retention applied: %(n)d conversation(s) deleted, %(held)d "
                                 "kept under legal hold.")
                      % {"n": report.conversations, "held": report.held})
        return True
    raise ServiceError("bad_action", _("Unknown action."))


def _entered(request: HttpRequest) -> dict[str, Any]:
    post = request.POST
    return {"team": post.get("team", ""), "mode": post.get("mode", "site"),
            "days": post.get("days", "")[:12], "legal_hold": bool(post.get("legal_hold"))}


def _uuid_or_none(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None
