"""The team pages: the list of teams (/teams/) and one team (/teams/<id>/) with its members,
managers, invitations, shared conversations, usage and settings.

Who sees what (conversations.access.team_role): members read the page; the team's managers and
superusers change it; anyone else gets "not found", as for every object one may not touch.
"""

from __future__ import annotations

import time
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from conversations.access import TeamRole, team_role
from conversations.models import Invitation
from conversations.teams import invitations, services
from conversations.teams.services import TeamRefused
from providers.models import ModelConfig

SESSION_KEY = "team_invitation_created"
SHOW_SECONDS = 300


# --- forms ------------------------------------------------------------------------------------
class TeamCreateForm(forms.Form):
    name = forms.CharField(label=gettext_lazy("Team name"), max_length=150)


class AddMembersForm(forms.Form):
    people = forms.CharField(
        label=gettext_lazy("Add people"), max_length=20_000,
        help_text=gettext_lazy("Usernames or e-mail addresses, one per line or separated by "
                               "commas. They need an account already; invite the others."),
        widget=forms.Textarea(attrs={"rows": 3, "autocomplete": "off"}))


class ModelChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return str(obj.display_name)


class TeamSettingsForm(forms.Form):
    members_can_continue = forms.BooleanField(
        label=gettext_lazy("Members may continue the team's shared conversations"),
        required=False,
        help_text=gettext_lazy("Off: members can read them; only their owners write."))
    default_model = ModelChoice(
        label=gettext_lazy("Default model for new chats"), queryset=ModelConfig.objects.none(),
        required=False, empty_label=gettext_lazy("(the site's default)"),
        help_text=gettext_lazy("Members who chose their own default keep it."))

    def __init__(self, *args: Any, team: Group, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["default_model"]
        assert isinstance(field, ModelChoice)
        field.queryset = services.models_for_team(team)


class InvitationForm(forms.Form):
    email = forms.EmailField(
        label=gettext_lazy("E-mail (optional)"), required=False,
        help_text=gettext_lazy("When given, only an account with this address can use the "
                               "link."),
        widget=forms.EmailInput(attrs={"autocomplete": "off"}))
    role = forms.ChoiceField(label=gettext_lazy("Role"), choices=Invitation.Role.choices,
                             initial=Invitation.Role.MEMBER)
    days = forms.IntegerField(label=gettext_lazy("Expires after (days)"),
                              min_value=1, max_value=invitations.MAX_DAYS,
                              initial=invitations.DEFAULT_DAYS)


class SiteInvitationForm(forms.Form):
    """A superuser's link to the site alone, into no team."""

    email = InvitationForm.base_fields["email"]
    days = InvitationForm.base_fields["days"]


# --- helpers ----------------------------------------------------------------------------------
def _team_for(request: HttpRequest, team_id: int, need: TeamRole) -> tuple[Group, TeamRole]:
    """The team and the viewer's role on it: 404 for who is not in it, 403 for a member
    asking for a manager's change."""
    team = Group.objects.filter(pk=team_id).first()
    role = team_role(request.user, team) if team is not None else TeamRole.NONE
    if team is None or role < TeamRole.MEMBER:
        raise Http404
    if role < need:
        raise PermissionDenied
    return team, role


def _back(team: Group, anchor: str = "") -> HttpResponse:
    return redirect(reverse("team", args=[team.pk]) + (f"#{anchor}" if anchor else ""))


def invite_url(token: str) -> str:
    return f"{settings.SITE_URL.rstrip('/')}{reverse('invite', args=[token])}"


def _take_new_invitation(request: HttpRequest, team: Group | None) -> dict[str, Any] | None:
    """The link made by the POST that redirected here: shown once, never on a later visit."""
    shown = request.session.pop(SESSION_KEY, None) if request.method == "GET" else None
    if not isinstance(shown, dict) or shown.get("team") != (team.pk if team else None):
        return None
    if time.time() - float(shown.get("at", 0)) >= SHOW_SECONDS:
        return None
    return {"url": shown.get("url", ""), "email": shown.get("email", ""),
            "role": shown.get("role", "")}


# --- pages ------------------------------------------------------------------------------------
@login_required
@require_http_methods(["GET", "POST"])
@sensitive_variables()  # a new invitation link may be among the locals
def team_list(request: HttpRequest) -> HttpResponse:
    """GET: the viewer's teams (all of them for a superuser). POST: a superuser creates one."""
    user = request.user
    form = TeamCreateForm(request.POST or None)
    if request.method == "POST":
        if not user.is_superuser:
            raise PermissionDenied
        if form.is_valid():
            try:
                team = services.create_team(form.cleaned_data["name"], actor=user,
                                            request=request)
            except TeamRefused as exc:
                form.add_error("name", exc.message)
            else:
                flash.success(request, _("Team “%(name)s” created. Add its members below.")
                              % {"name": team.name})
                return _back(team)
    managed = services.managed_team_ids(user)
    teams = [{"team": team, "manager": team.pk in managed}
             for team in services.teams_of(user)]
    context: dict[str, Any] = {"teams": teams, "form": form}
    if user.is_superuser:
        context.update({"invite_form": SiteInvitationForm(),
                        "pending": invitations.pending_for(None),
                        "new_invitation": _take_new_invitation(request, None)})
    response = render(request, "teams/list.html", context, status=400 if form.errors else 200)
    response["Cache-Control"] = "no-store"  # it may hold a new invitation link
    return response


@login_required
@require_GET
@sensitive_variables()  # a new invitation link may be among the locals
def team_detail(request: HttpRequest, team_id: int) -> HttpResponse:
    team, role = _team_for(request, team_id, TeamRole.MEMBER)
    row = services.settings_for(team)
    can_manage = role >= TeamRole.MANAGER
    context: dict[str, Any] = {
        "team": team, "role": role, "can_manage": can_manage,
        "is_manager_role": role == TeamRole.MANAGER, "is_admin_role": role == TeamRole.ADMIN,
        "members": services.members_of(team), "team_settings": row,
        "conversations": services.shared_conversations(team),
        "conversation_count": team.conversations.count(),
        "usage": services.usage_of(team),
    }
    if can_manage:
        context.update({
            "add_form": AddMembersForm(),
            "settings_form": TeamSettingsForm(team=team, initial={
                "members_can_continue": row.members_can_continue,
                "default_model": row.default_model_id}),
            "invite_form": InvitationForm(),
            "pending": invitations.pending_for(team),
            "new_invitation": _take_new_invitation(request, team),
        })
    response = render(request, "teams/team.html", context)
    response["Cache-Control"] = "no-store"  # it may hold a new invitation link
    return response


@login_required
@require_POST
def members_add(request: HttpRequest, team_id: int) -> HttpResponse:
    team, _role = _team_for(request, team_id, TeamRole.MANAGER)
    form = AddMembersForm(request.POST)
    if not form.is_valid():
        flash.error(request, " ".join(str(e) for e in form.errors.get("people", [])))
        return _back(team, "members")
    try:
        result = services.add_members(team, form.cleaned_data["people"], actor=request.user,
                                      request=request)
    except TeamRefused as exc:
        flash.error(request, exc.message)
        return _back(team, "members")
    if result.added:
        flash.success(request, _("Added: %(names)s.") % {"names": ", ".join(result.added)})
    if result.already:
        flash.info(request, _("Already members: %(names)s.")
                   % {"names": ", ".join(result.already)})
    if result.unknown:
        flash.warning(request, _("No account found for: %(names)s. Invite them with a link "
                                 "instead.") % {"names": ", ".join(result.unknown)})
    return _back(team, "members")


@login_required
@require_POST
def member_remove(request: HttpRequest, team_id: int, user_id: int) -> HttpResponse:
    team, _role = _team_for(request, team_id, TeamRole.MANAGER)
    try:
        person = services.remove_member(team, user_id, actor=request.user, request=request)
    except TeamRefused as exc:
        flash.error(request, exc.message)
        return _back(team, "members")
    flash.success(request, _("%(name)s is no longer a member of %(team)s; their open pages lost "
                             "the team's conversations.")
                  % {"name": person.get_username(), "team": team.name})
    if person.pk == request.user.pk and team_role(request.user, team) < TeamRole.MEMBER:
        return redirect("teams")
    return _back(team, "members")


@login_required
@require_POST
def member_role(request: HttpRequest, team_id: int, user_id: int) -> HttpResponse:
    team, _role = _team_for(request, team_id, TeamRole.MANAGER)
    manager = request.POST.get("manager") == "1"
    try:
        person = services.set_manager(team, user_id, manager, actor=request.user,
                                      request=request)
    except TeamRefused as exc:
        flash.error(request, exc.message)
        return _back(team, "members")
    text = (_("%(name)s is now a manager of %(team)s.") if manager
            else _("%(name)s is no longer a manager of %(team)s."))
    flash.success(request, text % {"name": person.get_username(), "team": team.name})
    if team_role(request.user, team) < TeamRole.MANAGER:
        return _back(team)  # a manager who stepped down reads the page as a member
    return _back(team, "members")


@login_required
@require_POST
def team_settings(request: HttpRequest, team_id: int) -> HttpResponse:
    team, _role = _team_for(request, team_id, TeamRole.MANAGER)
    form = TeamSettingsForm(request.POST, team=team)
    if not form.is_valid():
        flash.error(request, _("The settings were not saved: %(errors)s")
                    % {"errors": " ".join(str(e) for errors in form.errors.values()
                                          for e in errors)})
        return _back(team, "settings")
    try:
        changed = services.update_settings(
            team, members_can_continue=form.cleaned_data["members_can_continue"],
            default_model=form.cleaned_data["default_model"], actor=request.user,
            request=request)
    except TeamRefused as exc:
        flash.error(request, exc.message)
        return _back(team, "settings")
    flash.success(request, _("Settings saved.") if changed else _("Nothing changed."))
    return _back(team, "settings")


@login_required
@require_POST
@sensitive_variables("created")
def invitation_create(request: HttpRequest, team_id: int) -> HttpResponse:
    team, _role = _team_for(request, team_id, TeamRole.MANAGER)
    form = InvitationForm(request.POST)
    if not form.is_valid():
        flash.error(request, _("No invitation was made: %(errors)s")
                    % {"errors": " ".join(str(e) for errors in form.errors.values()
                                          for e in errors)})
        return _back(team, "invitations")
    try:
        created = invitations.create(team=team, email=form.cleaned_data["email"],
                                     role=form.cleaned_data["role"],
                                     days=form.cleaned_data["days"], actor=request.user,
                                     request=request)
    except TeamRefused as exc:
        flash.error(request, exc.message)
        return _back(team, "invitations")
    request.session[SESSION_KEY] = {"team": team.pk, "url": invite_url(created.token),
                                    "email": created.invitation.email,
                                    "role": created.invitation.get_role_display(),
                                    "at": time.time()}
    return _back(team, "invitations")


@login_required
@require_POST
def invitation_revoke(request: HttpRequest, team_id: int, invitation_id: int) -> HttpResponse:
    team, _role = _team_for(request, team_id, TeamRole.MANAGER)
    invitation = Invitation.objects.filter(pk=invitation_id, team=team).first()
    if invitation is None:
        raise Http404
    if invitations.revoke(invitation, actor=request.user, request=request):
        flash.success(request, _("The invitation is revoked; its link no longer works."))
    else:
        flash.info(request, _("This invitation was already used or revoked."))
    return _back(team, "invitations")


@login_required
@require_POST
@sensitive_variables("created")
def site_invitation_create(request: HttpRequest) -> HttpResponse:
    """A superuser invites someone to the site without a team."""
    if not request.user.is_superuser:
        raise PermissionDenied
    form = SiteInvitationForm(request.POST)
    if not form.is_valid():
        flash.error(request, _("No invitation was made: %(errors)s")
                    % {"errors": " ".join(str(e) for errors in form.errors.values()
                                          for e in errors)})
        return redirect(reverse("teams") + "#invitations")
    try:
        created = invitations.create(team=None, email=form.cleaned_data["email"],
                                     role=Invitation.Role.MEMBER,
                                     days=form.cleaned_data["days"], actor=request.user,
                                     request=request)
    except TeamRefused as exc:
        flash.error(request, exc.message)
        return redirect(reverse("teams") + "#invitations")
    request.session[SESSION_KEY] = {"team": None, "url": invite_url(created.token),
                                    "email": created.invitation.email, "role": "",
                                    "at": time.time()}
    return redirect(reverse("teams") + "#invitations")


@login_required
@require_POST
def site_invitation_revoke(request: HttpRequest, invitation_id: int) -> HttpResponse:
    if not request.user.is_superuser:
        raise PermissionDenied
    invitation = Invitation.objects.filter(pk=invitation_id, team__isnull=True).first()
    if invitation is None:
        raise Http404
    if invitations.revoke(invitation, actor=request.user, request=request):
        flash.success(request, _("The invitation is revoked; its link no longer works."))
    else:
        flash.info(request, _("This invitation was already used or revoked."))
    return redirect(reverse("teams") + "#invitations")
