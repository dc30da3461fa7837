"""Teams (Django groups with their TeamSettings): members, managers, settings, usage, and the
one-time invitations that let people in."""
