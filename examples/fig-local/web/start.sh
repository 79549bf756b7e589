# web's page is made of what its links answer: auth and catalogue (and, through catalogue,
# pricing).
get() { for _ in 1 2 3 4 5 6 7 8 9 10; do wget -qO- "$1" && return; sleep 0.5; done; }
mkdir -p /www
{
  echo "web"
  get "http://$AUTH_PORT_80_TCP_ADDR:$AUTH_PORT_80_TCP_PORT/"
  get "http://$CATALOGUE_PORT_80_TCP_ADDR:$CATALOGUE_PORT_80_TCP_PORT/"
} > /www/index.html
exec httpd -f -p 80 -h /www
