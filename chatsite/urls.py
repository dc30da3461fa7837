from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from chatsite import error_pages, health, views
from chatsite.oidc import views as oidc_views

handler400 = error_pages.bad_request
handler403 = error_pages.permission_denied
handler404 = error_pages.page_not_found
handler500 = error_pages.server_error

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("setup/", views.first_admin, name="first_admin"),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True),
         name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("accounts/password/done/", auth_views.PasswordChangeDoneView.as_view(),
         name="password_change_done"),
    path("accounts/signup/", views.signup, name="signup"),
    path("accounts/sso/login/", oidc_views.LoginStart.as_view(), name="oidc_login"),
    path("accounts/sso/callback/", oidc_views.callback, name="oidc_callback"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("admin/", admin.site.urls),
    path("v1/", include("conversations.api.urls")),
    path("", include("conversations.web.urls")),
]
