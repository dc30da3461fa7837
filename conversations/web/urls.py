from __future__ import annotations

from django.urls import path

from conversations.web import (
    document_views,
    images,
    invite_views,
    manage_views,
    preset_views,
    retention_views,
    share_views,
    team_views,
    token_views,
    transfer_views,
    views,
)

urlpatterns = [
    path("", views.home, name="home"),
    path("c/new/", views.conversation_new, name="conversation_new"),
    path("uploads/", images.upload_image, name="upload_image"),
    path("uploads/<uuid:attachment_id>/discard/", images.upload_discard, name="upload_discard"),
    path("images/<uuid:attachment_id>/", images.image, name="image"),
    path("documents/", document_views.upload_document, name="upload_document"),
    path("documents/<uuid:document_id>/discard/", document_views.document_discard,
         name="document_discard"),
    path("documents/<uuid:document_id>/status/", document_views.document_status,
         name="document_status"),
    path("documents/<uuid:document_id>/", document_views.document_file, name="document_file"),
    path("i/<str:image_id>", images.signed_image, name="signed_image"),
    path("c/<uuid:conversation_id>/", views.conversation_detail, name="conversation"),
    path("c/<uuid:conversation_id>/thread/", views.thread_fragment, name="thread_fragment"),
    path("c/<uuid:conversation_id>/messages/", views.message_post, name="message_post"),
    path("c/<uuid:conversation_id>/update/", views.conversation_update,
         name="conversation_update"),
    path("c/<uuid:conversation_id>/model/", views.conversation_model,
         name="conversation_model"),
    path("sidebar/", views.sidebar_fragment, name="sidebar_fragment"),
    path("c/<uuid:conversation_id>/settings/", views.conversation_settings,
         name="conversation_settings"),
    path("c/<uuid:conversation_id>/delete/", views.conversation_delete,
         name="conversation_delete"),
    path("c/<uuid:conversation_id>/share/", share_views.share_create, name="share_create"),
    path("c/<uuid:conversation_id>/share/<int:share_id>/revoke/", share_views.share_revoke,
         name="share_revoke"),
    path("c/<uuid:conversation_id>/export/", transfer_views.export_conversation,
         name="conversation_export"),
    path("import/", transfer_views.import_conversation, name="conversation_import"),
    path("s/<str:token>/", share_views.share_page, name="share"),
    path("s/<str:token>/thread/", share_views.share_thread, name="share_thread"),
    path("s/<str:token>/m/<uuid:message_id>/", share_views.share_message, name="share_message"),
    path("s/<str:token>/images/<uuid:attachment_id>/", share_views.share_image,
         name="share_image"),
    path("c/<uuid:conversation_id>/m/<uuid:message_id>/", views.message_fragment,
         name="message_fragment"),
    path("c/<uuid:conversation_id>/m/<uuid:message_id>/regenerate/", views.message_regenerate,
         name="message_regenerate"),
    path("c/<uuid:conversation_id>/m/<uuid:message_id>/stop/", views.message_stop,
         name="message_stop"),
    path("c/<uuid:conversation_id>/m/<uuid:message_id>/switch/", views.message_switch,
         name="message_switch"),
]

# API tokens on the profile page (the API itself is conversations/api/urls.py, at /v1/).
urlpatterns += [
    path("account/tokens/", token_views.token_list, name="api_tokens"),
    path("account/tokens/<int:token_id>/revoke/", token_views.token_revoke,
         name="api_token_revoke"),
]

# Team pages and invitation links (conversations/teams/).
urlpatterns += [
    path("teams/", team_views.team_list, name="teams"),
    path("teams/invitations/", team_views.site_invitation_create,
         name="site_invitation_create"),
    path("teams/invitations/<int:invitation_id>/revoke/", team_views.site_invitation_revoke,
         name="site_invitation_revoke"),
    path("teams/<int:team_id>/", team_views.team_detail, name="team"),
    path("teams/<int:team_id>/members/", team_views.members_add, name="team_members_add"),
    path("teams/<int:team_id>/members/<int:user_id>/remove/", team_views.member_remove,
         name="team_member_remove"),
    path("teams/<int:team_id>/members/<int:user_id>/role/", team_views.member_role,
         name="team_member_role"),
    path("teams/<int:team_id>/settings/", team_views.team_settings, name="team_settings"),
    path("teams/<int:team_id>/invitations/", team_views.invitation_create,
         name="team_invitation_create"),
    path("teams/<int:team_id>/invitations/<int:invitation_id>/revoke/",
         team_views.invitation_revoke, name="team_invitation_revoke"),
    path("invite/<str:token>/", invite_views.invite_page, name="invite"),
]

# The management pages for superusers: providers at a glance, the models (web/manage_views.py).
urlpatterns += [
    path("manage/providers/", manage_views.providers_page, name="manage_providers"),
    path("manage/providers/<str:kind>/", manage_views.provider_edit, name="manage_provider"),
    path("manage/providers/<str:kind>/test/", manage_views.provider_test,
         name="manage_provider_test"),
    path("manage/models/", manage_views.models_page, name="manage_models"),
    path("manage/models/team-defaults/", manage_views.team_defaults,
         name="manage_team_defaults"),
    path("manage/models/<str:slug>/", manage_views.model_edit, name="manage_model"),
    path("manage/models/<str:slug>/move/", manage_views.model_move, name="manage_model_move"),
    path("manage/models/<str:slug>/enabled/", manage_views.model_enabled,
         name="manage_model_enabled"),
]

# The retention policy for superusers (web/retention_views.py, conversations/retention/).
urlpatterns += [
    path("manage/retention/", retention_views.retention_page, name="manage_retention"),
]

# Presets (personal, team, site-wide): conversations/web/preset_views.py.
urlpatterns += [
    path("presets/", preset_views.preset_list, name="presets"),
    path("presets/new/", preset_views.preset_new, name="preset_new"),
    path("presets/<slug:slug>/edit/", preset_views.preset_edit, name="preset_edit"),
    path("presets/<slug:slug>/delete/", preset_views.preset_delete, name="preset_delete"),
]
